//! The edge layer: what the gateway does for a route before and after the function runs,
//! declared per route in the manifest instead of written in user code.
//!
//! The order a request goes through (each step may answer by itself):
//!
//! 1. [`traffic`]: which deployment serves the request (a preview host, a weighted alias with
//!    its sticky cookie, or the live one).
//! 2. [`client`]: who is calling (the client address, believing `X-Forwarded-For` only from
//!    trusted proxies) and where from (geo).
//! 3. `rules`: redirects answer, rewrites change the path; then the route is matched, and a
//!    path no route matches falls to the static assets ([`assets`]).
//! 4. `cors`: a preflight is answered here.
//! 5. `auth`: JWT or API key, 401 before any instance starts; the claims go on as [`Claims`].
//! 6. `limits`: the token bucket per key, shared through KV, 429 when empty.
//! 7. `cache`: a fresh stored response answers; misses for one key are coalesced into one call
//!    of the function.
//! 8. On the way out: the response headers rules, CORS headers, `x-nimbus-version`.

pub(crate) mod assets;
pub(crate) mod auth;
pub(crate) mod cache;
pub(crate) mod client;
pub(crate) mod cors;
pub(crate) mod freshness;
pub(crate) mod geo;
mod jwks;
pub(crate) mod limits;
pub(crate) mod rules;
pub(crate) mod traffic;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nimbus_control::DeploymentView;
use nimbus_manifest::edge::CorsPolicy;

/// The verified claims of a JWT (or the key's name for an API key), as the auth step left
/// them for the steps after it (a rate limit keyed by a claim, the event's
/// `requestContext.authorizer.jwt`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Claims(pub serde_json::Map<String, serde_json::Value>);

/// What the edge layer keeps across requests: each deployment's compiled [`Plan`] (by
/// version), and the fetched JWK sets by URL (kept across deploys, so a redeploy does not
/// refetch them).
#[derive(Default)]
pub(crate) struct EdgeState {
    plans: Mutex<HashMap<u64, Arc<Plan>>>,
    jwks: Mutex<HashMap<String, Arc<jwks::Remote>>>,
    /// The plan of every deployment that declares no edge policy or rule: no lock, no lookup.
    empty: Plan,
}

/// A deployment's plan as a request holds it: the empty one borrowed, a compiled one shared.
/// Handing out a clone of one `Arc` for every request wrote its count from every core on every
/// request (`perf`: about 0.13 µs a warm request), for the plan most deployments have.
pub(crate) enum PlanRef<'a> {
    Empty(&'a Plan),
    Compiled(Arc<Plan>),
}

impl std::ops::Deref for PlanRef<'_> {
    type Target = Plan;

    fn deref(&self) -> &Plan {
        match self {
            PlanRef::Empty(p) => p,
            PlanRef::Compiled(p) => p,
        }
    }
}

impl PlanRef<'_> {
    /// The plan for the way out ([`Outgoing::plan`]): `None` for the empty plan, which adds
    /// nothing there.
    pub(crate) fn for_way_out(&self) -> Option<Arc<Plan>> {
        match self {
            PlanRef::Empty(_) => None,
            PlanRef::Compiled(p) => Some(p.clone()),
        }
    }
}

/// Plans kept at most; older versions are dropped (and recompiled if they serve again).
const MAX_PLANS: usize = 16;

impl EdgeState {
    /// The plan of a deployment, compiled on its first request.
    pub(crate) fn plan(&self, d: &DeploymentView) -> PlanRef<'_> {
        if d.edge.is_empty() {
            return PlanRef::Empty(&self.empty);
        }
        if let Some(p) = self.plans.lock().ok().and_then(|m| m.get(&d.version).cloned()) {
            return PlanRef::Compiled(p);
        }
        let remote = |url: &str| -> Arc<jwks::Remote> {
            let mut m = match self.jwks.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            m.entry(url.to_owned()).or_insert_with(|| Arc::new(jwks::Remote::new(url.to_owned()))).clone()
        };
        let plan = Arc::new(Plan {
            auth: d.edge.auth.iter().map(|(n, p)| (n.clone(), Arc::new(auth::Verifier::new(p, &remote)))).collect(),
            cors: d.edge.cors.clone().into_iter().collect(),
            rules: rules::Rules::new(&d.edge),
        });
        if let Ok(mut m) = self.plans.lock() {
            if m.len() >= MAX_PLANS {
                m.clear();
            }
            m.insert(d.version, plan.clone());
        }
        PlanRef::Compiled(plan)
    }
}

/// One deployment's edge layer, ready for requests.
#[derive(Default)]
pub(crate) struct Plan {
    pub(crate) auth: HashMap<String, Arc<auth::Verifier>>,
    pub(crate) cors: HashMap<String, CorsPolicy>,
    pub(crate) rules: rules::Rules,
}

impl Plan {
    /// Whether the way out has anything to add (response headers rules or CORS).
    pub(crate) fn decorates(&self) -> bool {
        self.rules.has_headers() || !self.cors.is_empty()
    }
}

/// What the steps on the way out need to know about the request (step 8).
#[derive(Default)]
pub(crate) struct Outgoing {
    pub(crate) plan: Option<Arc<Plan>>,
    /// The path as the client sent it (headers rules match it, not a rewritten one).
    pub(crate) path: String,
    pub(crate) origin: Option<String>,
    /// The route's CORS policy, once the route is known.
    pub(crate) cors: Option<String>,
}

impl Outgoing {
    /// Add the headers rules' headers and the CORS headers to a response.
    pub(crate) fn apply(&self, headers: &mut http::HeaderMap) {
        let Some(plan) = &self.plan else { return };
        if plan.rules.has_headers() {
            plan.rules.add_headers(&self.path, headers);
        }
        if let Some(p) = self.cors.as_ref().and_then(|c| plan.cors.get(c)) {
            cors::decorate(p, self.origin.as_deref(), headers);
        }
    }
}

/// Step 3, before the route is matched: a redirect's answer (status and `Location`), or the
/// request's path rewritten in place.
pub(crate) fn rules<B>(plan: &Plan, req: &mut http::Request<B>) -> Option<(http::StatusCode, String)> {
    let (path, query) = (req.uri().path(), req.uri().query());
    if let Some((status, location)) = plan.rules.redirect(path, query) {
        return Some((http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::TEMPORARY_REDIRECT), location));
    }
    let rewritten = plan.rules.rewrite(path, query)?;
    match rewritten.parse::<http::uri::PathAndQuery>() {
        Ok(pq) => {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        Err(e) => tracing::warn!("rewrite to {rewritten} gives no valid path ({e}); the request keeps its own"),
    }
    None
}

/// Step 4: a CORS preflight for a route with a policy, answered here (`None`: not a preflight,
/// or its route has no policy, so it goes on as any request).
pub(crate) fn preflight(
    plan: &Plan,
    live: &DeploymentView,
    host: Option<&str>,
    req: &http::request::Parts,
) -> Option<Result<Vec<(&'static str, String)>, ()>> {
    let requested = cors::preflight_method(&req.method, &req.headers)?;
    let nimbus_control::RouteMatch::Found { route, .. } = live.router.find(host, &requested, req.uri.path()) else {
        return None;
    };
    let policy = plan.cors.get(route.cors.as_deref()?)?;
    Some(match cors::preflight(policy, &req.headers, &requested) {
        cors::Preflight::Allow(headers) => Ok(headers),
        cors::Preflight::Deny => Err(()),
    })
}

/// Step 5: the route's auth policy, if it has one. On success the claims it forwards are set
/// as request headers, after removing any the client sent under those names (a client must
/// not forge them); those names are removed even when the claim is absent.
pub(crate) async fn authorize(
    plan: &Plan,
    route: &nimbus_manifest::RouteSpec,
    headers: &mut http::HeaderMap,
) -> Result<Option<Claims>, (auth::Denied, bool)> {
    let Some(name) = &route.auth else { return Ok(None) };
    let Some(verifier) = plan.auth.get(name) else {
        let missing = auth::Denied { error: Some("invalid_token"), description: format!("no auth policy {name}") };
        return Err((missing, true));
    };
    let claims = verifier.check(headers).await.map_err(|d| (d, verifier.is_bearer()))?;
    for (claim, header) in verifier.forwarded().into_iter().flatten() {
        let Ok(name) = http::HeaderName::try_from(header.as_str()) else { continue };
        headers.remove(&name);
        let value = claims.0.get(claim).map(auth::claim_text);
        if let Some(v) = value.and_then(|v| http::HeaderValue::try_from(v).ok()) {
            headers.insert(name, v);
        }
    }
    Ok(Some(claims))
}
