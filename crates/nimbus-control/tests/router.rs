//! Property tests of the route table (`nimbus_control::Router`): route sets that the manifest
//! accepts (generated as `nimbus.toml` text and parsed by `nimbus_manifest::parse`), asked with
//! arbitrary hosts, methods and paths (percent-encoding, `//`, very long, unicode), answer a
//! match, a 404 or a 405 and never panic; and a path built from an accepted route, asked with
//! one of its methods and its host, finds that route (or one at least as specific) with the
//! parameters it was built with.
//!
//! Failures proptest finds are kept in `router.proptest-regressions` beside this file and
//! replayed first on every run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use nimbus_control::{RouteMatch, Router};
use nimbus_manifest::{Methods, RouteSpec};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};

/// Explicit case counts and a fixed seed: the same cases on every run, in CI and locally.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        rng_seed: RngSeed::Fixed(0x726f_7574_6573),
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Debug)]
enum Seg {
    Lit(&'static str),
    Param(&'static str),
}

/// One `[[routes]]` table: path segments, trailing wildcard, trailing slash, methods, host.
type RawRoute = (Vec<Seg>, bool, bool, Option<Vec<&'static str>>, Option<&'static str>);

fn raw_route() -> impl Strategy<Value = RawRoute> {
    let seg = prop_oneof![
        3 => prop::sample::select(vec!["items", "a", "b", "v1", "static", "ü", "日本", "x:y", "%41", "a.b", "-"]).prop_map(Seg::Lit),
        1 => prop::sample::select(vec!["id", "x", "y", "name_2"]).prop_map(Seg::Param),
    ];
    let methods = prop::option::of(prop::collection::vec(
        prop::sample::select(vec!["GET", "get", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"]),
        1..3,
    ));
    let host = prop::option::of(prop::sample::select(vec!["api.example.com", "Other.Example.com", "xn--bcher-kva.ch"]));
    (prop::collection::vec(seg, 0..4), any::<bool>(), any::<bool>(), methods, host)
}

fn path_of(r: &RawRoute) -> String {
    let (segs, wildcard, slash, _, _) = r;
    let mut p = String::new();
    for s in segs {
        match s {
            Seg::Lit(l) => p += &format!("/{l}"),
            Seg::Param(n) => p += &format!("/{{{n}}}"),
        }
    }
    if *wildcard {
        p += "/*";
    } else if *slash || p.is_empty() {
        p += "/";
    }
    p
}

fn manifest(routes: &[RawRoute]) -> String {
    let mut s = "name = \"app\"\n[functions.f]\nruntime = \"node\"\nhandler = \"index.handler\"\n".to_owned();
    for r in routes {
        s += &format!("[[routes]]\npath = {:?}\nfunction = \"f\"\n", path_of(r));
        if let Some(m) = &r.3 {
            s += &format!("method = {m:?}\n");
        }
        if let Some(h) = &r.4 {
            s += &format!("host = {h:?}\n");
        }
    }
    s
}

/// The routes the manifest accepts, or none when it refuses the set.
fn accepted(raw: &[RawRoute]) -> Option<Vec<RouteSpec>> {
    nimbus_manifest::parse(&manifest(raw), "nimbus.toml").ok().map(|m| m.routes)
}

/// Route sets, some of which the manifest refuses (conflicts, repeated parameters).
fn route_set() -> impl Strategy<Value = Vec<RawRoute>> {
    prop::collection::vec(raw_route(), 0..8)
}

fn ask(router: &Router, host: Option<&str>, method: &str, path: &str) -> Result<(), TestCaseError> {
    match router.find(host, method, path) {
        RouteMatch::Found { route, params } => {
            prop_assert!(route.methods.allows(method), "{method} {path} found {route:?}, which does not allow it");
            for (k, _) in &params {
                let named = route.path.contains(&format!("{{{k}}}")) || (k == "proxy" && route.path.ends_with("/*"));
                prop_assert!(named, "{} {} found {:?} with a parameter {} it does not have", method, path, route, k);
            }
        }
        RouteMatch::MethodNotAllowed { allow } => prop_assert!(!allow.is_empty()),
        RouteMatch::NotFound => {}
    }
    Ok(())
}

/// Whether `route` matches `path` segment by segment: literal segments equal, a parameter
/// takes one non-empty segment, the wildcard one or more characters.
fn covers(route: &RouteSpec, path: &str) -> bool {
    let (pattern, wildcard) = match route.path.strip_suffix("/*") {
        Some(p) => (p, true),
        None => (route.path.as_str(), false),
    };
    let pat: Vec<&str> = pattern.split('/').collect();
    let got: Vec<&str> = path.split('/').collect();
    if wildcard {
        if got.len() <= pat.len() || got[pat.len()..].join("/").is_empty() {
            return false;
        }
    } else if got.len() != pat.len() {
        return false;
    }
    pat.iter().zip(&got).all(|(p, g)| if p.starts_with('{') { !g.is_empty() } else { p == g })
}

/// A value for a parameter: no literal segment of any route starts with `~`.
fn value() -> impl Strategy<Value = String> {
    prop_oneof!["~[a-zA-Z0-9._-]{0,12}", "~(%[0-9A-F]{2}){1,4}", "~[ü日本€]{1,3}"]
}

proptest! {
    #![proptest_config(config(512))]

    /// Any request against any accepted route set: a match, a 404 or a 405.
    #[test]
    fn any_request_gets_an_answer(
        routes in route_set(),
        host in prop::option::of(prop_oneof![
            "[a-zA-Z0-9.:-]{0,30}",
            Just("API.EXAMPLE.COM:8080".to_owned()),
            Just("api.example.com:".to_owned()),
            Just(":".to_owned()),
            "\\PC{0,20}",
        ]),
        method in prop_oneof![
            prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "get", ""]).prop_map(str::to_owned),
            "\\PC{0,10}",
        ],
        path in prop_oneof![
            "(/[a-z0-9ü%{}*:.~-]{0,6}){0,8}/?",
            "/\\PC{0,200}",
            Just("//".to_owned()),
            Just("/items//".to_owned()),
            Just("".to_owned()),
            Just("*".to_owned()),
            (1usize..20_000).prop_map(|n| format!("/{}", "a/".repeat(n))),
            (1usize..70_000).prop_map(|n| format!("/items/{}", "x".repeat(n))),
        ],
    ) {
        let Some(routes) = accepted(&routes) else { return Ok(()) };
        let router = Router::new(routes);
        ask(&router, host.as_deref(), &method, &path)?;
    }

    /// A path built from an accepted route, with one of its methods and its host, finds it
    /// (or a route at least as specific that also covers the path) with the values it was
    /// built with.
    #[test]
    fn a_path_built_from_a_route_finds_it(
        routes in route_set(),
        pick in any::<usize>(),
        values in prop::collection::vec(value(), 8),
        rest in prop::collection::vec(value(), 1..4),
        method_pick in any::<usize>(),
        port in prop::option::of(1u16..),
    ) {
        let Some(routes) = accepted(&routes) else { return Ok(()) };
        if routes.is_empty() {
            return Ok(());
        }
        let router = Router::new(routes.clone());
        let route = &routes[pick % routes.len()];
        let mut path = String::new();
        let mut want = Vec::new();
        let pattern = route.path.strip_suffix("/*").unwrap_or(&route.path);
        for (i, seg) in pattern.split('/').enumerate().skip(1) {
            match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    path += &format!("/{}", values[i % values.len()]);
                    want.push((name.to_owned(), values[i % values.len()].clone()));
                }
                None => path += &format!("/{seg}"),
            }
        }
        if route.path.ends_with("/*") {
            let rest = rest.join("/");
            path += &format!("/{rest}");
            want.push(("proxy".to_owned(), rest));
        }
        let method = match &route.methods {
            Methods::Any => "PATCH".to_owned(),
            Methods::List(l) => l[method_pick % l.len()].clone(),
        };
        let host = match &route.host {
            Some(h) => Some(match port {
                Some(p) => format!("{}:{p}", h.to_ascii_uppercase()),
                None => h.clone(),
            }),
            // A host no route names, so host-specific routes stay out of the way.
            None => port.map(|p| format!("elsewhere.example:{p}")),
        };
        match router.find(host.as_deref(), &method, &path) {
            RouteMatch::Found { route: found, params } => {
                if **found == *route {
                    prop_assert_eq!(params, want, "{} {}", method, path);
                } else {
                    prop_assert!(covers(found, &path), "{} {} found {:?}, which does not cover it", method, path, found);
                    let wild = |r: &RouteSpec| r.path.ends_with("/*");
                    let params = |r: &RouteSpec| r.path.matches('{').count();
                    prop_assert!(
                        wild(route) || params(route) > 0,
                        "{} {}: a literal route lost to {:?}", method, path, found
                    );
                }
            }
            other => {
                let got = match other {
                    RouteMatch::NotFound => "404".to_owned(),
                    RouteMatch::MethodNotAllowed { allow } => format!("405 (allow {allow})"),
                    RouteMatch::Found { .. } => unreachable!(),
                };
                prop_assert!(false, "{} {} on {:?} for {:?}: {}", method, path, host, route, got);
            }
        }
    }
}
