//! `[[redirects]]`, `[[rewrites]]` and `[[headers]]`: path rules applied to every request of a
//! deployment, in the spirit of `vercel.json`. Patterns are written as route paths are: literal
//! segments, `{name}` for one segment, and a trailing `*` for the rest of the path. The first
//! matching redirect answers; the first matching rewrite changes the path the routes see (the
//! query is kept); every matching headers rule adds its headers to the response.

use nimbus_manifest::edge::EdgeSpec;

/// A path matched against a pattern: the `{name}` segments and the `*` tail.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Captures<'p> {
    params: Vec<(&'p str, &'p str)>,
    rest: Option<&'p str>,
}

/// Match `path` against `pattern`; `None` when it does not match. A trailing `*` takes the
/// rest of the path, which may be empty (`/docs/*` matches `/docs`).
pub(crate) fn matches<'p>(pattern: &'p str, path: &'p str) -> Option<Captures<'p>> {
    let mut out = Captures::default();
    let mut rest = Some(path.strip_prefix('/')?);
    for seg in pattern.strip_prefix('/')?.split('/') {
        if seg == "*" {
            out.rest = Some(rest.unwrap_or_default());
            return Some(out);
        }
        let (head, tail) = match rest?.split_once('/') {
            Some((h, t)) => (h, Some(t)),
            None => (rest?, None),
        };
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if head.is_empty() {
                return None;
            }
            out.params.push((name, head));
        } else if seg != head {
            return None;
        }
        rest = tail;
    }
    rest.is_none().then_some(out)
}

/// `destination` with each `{name}` and `*` replaced by what the source captured.
pub(crate) fn substitute(destination: &str, c: &Captures<'_>) -> String {
    let mut out = destination.to_owned();
    for (name, value) in &c.params {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    if let Some(rest) = c.rest {
        out = out.replace('*', rest);
    }
    out
}

/// The rules of one deployment.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    redirects: Vec<nimbus_manifest::edge::Redirect>,
    rewrites: Vec<nimbus_manifest::edge::Rewrite>,
    headers: Vec<(String, Vec<(http::HeaderName, http::HeaderValue)>)>,
}

impl Rules {
    pub(crate) fn new(edge: &EdgeSpec) -> Self {
        let headers = edge
            .headers
            .iter()
            .map(|h| {
                let pairs = h
                    .headers
                    .iter()
                    .filter_map(|(n, v)| {
                        Some((http::HeaderName::try_from(n.as_str()).ok()?, http::HeaderValue::try_from(v).ok()?))
                    })
                    .collect();
                (h.source.clone(), pairs)
            })
            .collect();
        Rules { redirects: edge.redirects.clone(), rewrites: edge.rewrites.clone(), headers }
    }

    /// The first redirect for `path`: its status and `Location` (the request's query is kept
    /// unless the destination has its own).
    pub(crate) fn redirect(&self, path: &str, query: Option<&str>) -> Option<(u16, String)> {
        self.redirects.iter().find_map(|r| {
            let location = substitute(&r.destination, &matches(&r.source, path)?);
            Some((r.status, with_query(location, query)))
        })
    }

    /// The path the first matching rewrite gives `path`, with the request's query.
    pub(crate) fn rewrite(&self, path: &str, query: Option<&str>) -> Option<String> {
        self.rewrites
            .iter()
            .find_map(|r| Some(with_query(substitute(&r.destination, &matches(&r.source, path)?), query)))
    }

    /// Add the headers of every rule whose source matches `path` (a later rule's value wins).
    pub(crate) fn add_headers(&self, path: &str, headers: &mut http::HeaderMap) {
        for (source, pairs) in &self.headers {
            if matches(source, path).is_some() {
                for (name, value) in pairs {
                    headers.insert(name.clone(), value.clone());
                }
            }
        }
    }

    pub(crate) fn has_headers(&self) -> bool {
        !self.headers.is_empty()
    }
}

fn with_query(target: String, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() && !target.contains('?') => format!("{target}?{q}"),
        _ => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_route_paths_do() {
        /// (pattern, path, what it captures: the params and the rest, or no match)
        type Case<'a> = (&'a str, &'a str, Option<(&'a [(&'a str, &'a str)], Option<&'a str>)>);
        let table: &[Case<'_>] = &[
            ("/a", "/a", Some((&[], None))),
            ("/a", "/a/", None),
            ("/a", "/b", None),
            ("/blog/{slug}", "/blog/hello", Some((&[("slug", "hello")], None))),
            ("/blog/{slug}", "/blog/", None),
            ("/blog/{slug}", "/blog/a/b", None),
            ("/docs/*", "/docs/a/b", Some((&[], Some("a/b")))),
            ("/docs/*", "/docs/", Some((&[], Some("")))),
            ("/docs/*", "/docs", Some((&[], Some("")))),
            ("/{v}/*", "/v1/x", Some((&[("v", "v1")], Some("x")))),
            ("/", "/", Some((&[], None))),
        ];
        for (pattern, path, want) in table {
            let got = matches(pattern, path);
            let want = want.map(|(p, r)| Captures { params: p.to_vec(), rest: r });
            assert_eq!(got, want, "{pattern} against {path}");
        }
    }

    #[test]
    fn redirects_rewrites_and_headers_apply() {
        let edge: EdgeSpec = serde_json::from_value(serde_json::json!({
            "redirects": [{"source": "/old/{x}", "destination": "/new/{x}", "status": 301},
                          {"source": "/ext/*", "destination": "https://example.com/*?from=nimbus", "status": 308}],
            "rewrites": [{"source": "/r/*", "destination": "/real/*"}],
            "headers": [{"source": "/*", "headers": [["x-a", "1"]]}, {"source": "/r/*", "headers": [["x-a", "2"]]}]
        }))
        .unwrap();
        let rules = Rules::new(&edge);
        assert_eq!(rules.redirect("/old/p", Some("q=1")), Some((301, "/new/p?q=1".into())));
        assert_eq!(rules.redirect("/ext/a/b", Some("q=1")), Some((308, "https://example.com/a/b?from=nimbus".into())));
        assert_eq!(rules.redirect("/other", None), None);
        assert_eq!(rules.rewrite("/r/x/y", Some("k=v")), Some("/real/x/y?k=v".into()));
        let mut h = http::HeaderMap::new();
        rules.add_headers("/r/x", &mut h);
        assert_eq!(h.get("x-a").unwrap(), "2");
    }
}
