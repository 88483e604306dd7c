//! Route matching: host, then path (matchit: literal segments before `{params}` before the
//! trailing wildcard), then method. Built once per deployment; matching allocates only for
//! the captured parameters.

use std::collections::HashMap;
use std::sync::Arc;

use nimbus_manifest::RouteSpec;

pub struct Router {
    /// Shared, so a matched request holds its route for as long as it runs without a copy (a
    /// `RouteSpec` clone cost about 450 instructions a request).
    routes: Vec<Arc<RouteSpec>>,
    by_host: HashMap<String, matchit::Router<Vec<usize>>>,
    any_host: matchit::Router<Vec<usize>>,
}

pub enum RouteMatch<'a> {
    Found { route: &'a Arc<RouteSpec>, params: Vec<(String, String)> },
    MethodNotAllowed { allow: String },
    NotFound,
}

impl Router {
    /// Build from validated routes (the manifest validator has already rejected conflicts).
    pub fn new(routes: Vec<RouteSpec>) -> Router {
        let mut groups: HashMap<(Option<String>, String), Vec<usize>> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            groups.entry((r.host.clone(), r.matcher_path())).or_default().push(i);
        }
        let mut by_host: HashMap<String, matchit::Router<Vec<usize>>> = HashMap::new();
        let mut any_host = matchit::Router::new();
        let mut keys: Vec<_> = groups.into_iter().collect();
        keys.sort_by_key(|(_, idx)| idx.first().copied());
        for ((host, path), idx) in keys {
            let router = match host {
                Some(h) => by_host.entry(h).or_default(),
                None => &mut any_host,
            };
            if let Err(e) = router.insert(path.clone(), idx) {
                tracing::error!("route {path} could not be added: {e}");
            }
        }
        Router { routes: routes.into_iter().map(Arc::new).collect(), by_host, any_host }
    }

    pub fn routes(&self) -> &[Arc<RouteSpec>] {
        &self.routes
    }

    pub fn find(&self, host: Option<&str>, method: &str, path: &str) -> RouteMatch<'_> {
        let mut allow: Vec<String> = Vec::new();
        let host = host.map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase());
        let candidates =
            host.as_ref().and_then(|h| self.by_host.get(h)).into_iter().chain(std::iter::once(&self.any_host));
        for router in candidates {
            let Ok(m) = router.at(path) else { continue };
            for &i in m.value {
                let Some(route) = self.routes.get(i) else { continue };
                if route.methods.allows(method) {
                    let params = m.params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
                    return RouteMatch::Found { route, params };
                }
                allow.push(route.methods.describe());
            }
        }
        if allow.is_empty() {
            RouteMatch::NotFound
        } else {
            RouteMatch::MethodNotAllowed { allow: allow.join(", ") }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_manifest::Methods;

    fn r(methods: &[&str], path: &str, host: Option<&str>, function: &str) -> RouteSpec {
        RouteSpec {
            methods: if methods.is_empty() {
                Methods::Any
            } else {
                Methods::List(methods.iter().map(|m| m.to_string()).collect())
            },
            path: path.into(),
            host: host.map(Into::into),
            function: function.into(),
            is_async: false,
            auth: None,
            cors: None,
            rate_limit: None,
            cache: false,
            cache_profile: None,
        }
    }

    /// (host, method, path, Ok((function, params)) or Err(status))
    type RouteCase = (
        Option<&'static str>,
        &'static str,
        &'static str,
        Result<(&'static str, &'static [(&'static str, &'static str)]), &'static str>,
    );

    #[test]
    fn matching_table() {
        let router = Router::new(vec![
            r(&["GET"], "/items", None, "list"),
            r(&["POST"], "/items", None, "create"),
            r(&["GET"], "/items/{id}", None, "get"),
            r(&["GET"], "/items/special", None, "special"),
            r(&[], "/static/*", None, "static"),
            r(&["GET"], "/items", Some("api.example.com"), "api-list"),
        ]);
        let cases: &[RouteCase] = &[
            (None, "GET", "/items", Ok(("list", &[]))),
            (None, "POST", "/items", Ok(("create", &[]))),
            (None, "GET", "/items/42", Ok(("get", &[("id", "42")]))),
            (None, "GET", "/items/special", Ok(("special", &[]))),
            (None, "HEAD", "/items/42", Ok(("get", &[("id", "42")]))),
            (None, "DELETE", "/static/css/site.css", Ok(("static", &[("proxy", "css/site.css")]))),
            (Some("API.example.com:8080"), "GET", "/items", Ok(("api-list", &[]))),
            (Some("api.example.com"), "POST", "/items", Ok(("create", &[]))),
            (Some("other.example.com"), "GET", "/items", Ok(("list", &[]))),
            (None, "DELETE", "/items", Err("405")),
            (None, "GET", "/nothing", Err("404")),
        ];
        for (host, method, path, want) in cases {
            let got = match router.find(*host, method, path) {
                RouteMatch::Found { route, params } => Ok((route.function.clone(), params)),
                RouteMatch::MethodNotAllowed { .. } => Err("405"),
                RouteMatch::NotFound => Err("404"),
            };
            let want = want.map(|(f, p)| {
                (f.to_string(), p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
            });
            assert_eq!(got, want, "{host:?} {method} {path}");
        }
    }
}
