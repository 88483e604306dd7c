//! The first edge step: which deployment serves a request.
//!
//! 1. A preview host (`v8.preview.localhost` under `nimbus up --preview-domain
//!    preview.localhost`) is served by deployment 8, any stored one; an unknown version is a
//!    404 that says so. No cookie.
//! 2. Otherwise, when the live alias splits its traffic, a request whose sticky cookie
//!    (`nimbus-version=8`) names a version that still has a share keeps it; any other gets a
//!    weighted random choice, and the answer sets the cookie so the client stays there.
//! 3. Otherwise the live deployment.
//!
//! The choice reads the snapshot the caller already loaded: no lock, and no allocation but
//! the `Set-Cookie` value when one is set. It takes the parts of the gateway it reads (the
//! snapshot, the preview domain, the control plane) and answers a refusal as [`Unserved`],
//! which `http_route.rs` maps to HTTP.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use nimbus_control::{Control, DeploymentView, Snapshot};

use crate::body::GwResp;
use crate::util::X_NIMBUS_VERSION;

/// The cookie that keeps a client on the version it was given.
pub(crate) const COOKIE: &str = "nimbus-version";

/// The deployment chosen for a request, and the cookie to set on its answer.
pub(crate) struct Chosen {
    pub view: Arc<DeploymentView>,
    /// `Set-Cookie` for the answer: the version picked by weight.
    pub set_cookie: Option<HeaderValue>,
}

/// Why no deployment serves a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unserved {
    /// A preview host whose version is not stored (or a name under the preview domain that
    /// names none).
    UnknownPreview,
    /// Nothing is deployed yet.
    NothingLive,
}

/// Choose the deployment for a request as it arrived, from the snapshot of the deployments.
pub(crate) fn choose_for<B>(
    snap: &Snapshot,
    preview_domain: Option<&str>,
    req: &http::Request<B>,
) -> Result<Chosen, Unserved> {
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri().host());
    choose(snap, req.headers(), host, preview_domain)
}

/// The answer with the sticky cookie, when one was chosen.
pub(crate) fn answer<E>(resp: Result<GwResp, E>, set_cookie: Option<HeaderValue>) -> Result<GwResp, E> {
    resp.map(|mut r| {
        if let Some(cookie) = set_cookie {
            r.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        r
    })
}

/// On the way out: every answer of a chosen version says which (`x-nimbus-version`), and the
/// control plane sees how it went (a running canary judges its new version by it).
pub(crate) fn finish(control: &dyn Control, resp: &mut GwResp, version: Option<u64>, started: std::time::Instant) {
    let Some(version) = version else { return };
    if !resp.headers().contains_key(X_NIMBUS_VERSION) {
        resp.headers_mut().insert(X_NIMBUS_VERSION, HeaderValue::from(version));
    }
    control.observe(version, resp.status().is_server_error(), started.elapsed());
}

/// Choose the deployment for a request (see the module docs).
pub(crate) fn choose(
    snap: &Snapshot,
    headers: &HeaderMap,
    host: Option<&str>,
    preview_domain: Option<&str>,
) -> Result<Chosen, Unserved> {
    if let Some(version) = preview_domain.and_then(|d| preview_version(host?, d)) {
        return match version.and_then(|v| snap.versions.get(&v)) {
            Some(view) => Ok(Chosen { view: view.clone(), set_cookie: None }),
            None => Err(Unserved::UnknownPreview),
        };
    }
    // The cookie is read only while the alias is split.
    let split = !snap.traffic.is_empty();
    if let Some(kept) =
        split.then(|| sticky(headers)).flatten().and_then(|v| snap.traffic.iter().find(|(view, _)| view.version == v))
    {
        return Ok(Chosen { view: kept.0.clone(), set_cookie: None });
    }
    if let Some(view) = pick(&snap.traffic, rand::random_range(0..100)) {
        let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Lax", view.version);
        return Ok(Chosen { view: view.clone(), set_cookie: HeaderValue::from_str(&cookie).ok() });
    }
    let live = snap.live.clone().ok_or(Unserved::NothingLive)?;
    Ok(Chosen { view: live, set_cookie: None })
}

/// The version a weighted roll in `0..100` lands on (shares sum to 100; the last one takes
/// any remainder); `None` for an empty split (the live version has all the traffic).
fn pick(split: &[(Arc<DeploymentView>, u32)], roll: u32) -> Option<&Arc<DeploymentView>> {
    let mut upto = 0;
    split
        .iter()
        .find(|(_, percent)| {
            upto += percent;
            roll < upto
        })
        .or(split.last())
        .map(|(view, _)| view)
}

/// The version `nimbus-version=N` names in the `Cookie` headers, when there is one.
fn sticky(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('=')?.trim().parse().ok())
}

/// `Some(version)` when `host` (its port ignored) is under the preview domain: `Some(Some(n))`
/// for `v<n>.DOMAIN`, `Some(None)` for another name under it.
fn preview_version(host: &str, domain: &str) -> Option<Option<u64>> {
    let name =
        host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(n, _)| n);
    // Host names compare without regard to case (the domain is lower-cased at start).
    let cut = name.len().checked_sub(domain.len())?;
    let (label, tail) = (name.get(..cut)?, name.get(cut..)?);
    if !tail.eq_ignore_ascii_case(domain) {
        return None;
    }
    let label = label.strip_suffix('.')?;
    Some(label.strip_prefix('v').or_else(|| label.strip_prefix('V')).and_then(|n| n.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(version: u64) -> Arc<DeploymentView> {
        Arc::new(DeploymentView {
            version,
            app: "a".into(),
            created_ms: 0,
            functions: Default::default(),
            router: nimbus_control::Router::new(Vec::new()),
            schedules: Vec::new(),
            pricing: Default::default(),
            kv: Default::default(),
            buckets: Default::default(),
            queues: Default::default(),
            triggers: Vec::new(),
            edge: Default::default(),
            assets: None,
        })
    }

    fn snapshot() -> Snapshot {
        let versions = [(1, view(1)), (7, view(7)), (8, view(8))].into_iter().collect();
        Snapshot { live: Some(view(7)), versions, traffic: vec![(view(7), 90), (view(8), 10)] }
    }

    fn cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn rolls_land_by_share() {
        let split = snapshot().traffic;
        let picked: Vec<u64> = [0, 89, 90, 99].iter().map(|r| pick(&split, *r).unwrap().version).collect();
        assert_eq!(picked, [7, 7, 8, 8]);
        assert!(pick(&[], 5).is_none());
    }

    #[test]
    fn a_sticky_cookie_keeps_its_version_while_it_has_a_share() {
        let snap = snapshot();
        let chosen = choose(&snap, &cookie("a=b; nimbus-version=8"), None, None).unwrap();
        assert_eq!((chosen.view.version, chosen.set_cookie.is_none()), (8, true));
        let moved = choose(&snap, &cookie("nimbus-version=1"), None, None).unwrap();
        assert!([7, 8].contains(&moved.view.version), "version 1 has no share: chosen again");
        let set = moved.set_cookie.unwrap();
        assert_eq!(
            set.to_str().unwrap(),
            format!("nimbus-version={}; Path=/; HttpOnly; SameSite=Lax", moved.view.version)
        );
    }

    #[test]
    fn preview_hosts_name_any_stored_version() {
        let snap = snapshot();
        let host = |h: &str| choose(&snap, &HeaderMap::new(), Some(h), Some("preview.localhost"));
        assert_eq!(host("v1.preview.localhost:8080").unwrap().view.version, 1);
        assert_eq!(host("V1.Preview.LOCALHOST").unwrap().view.version, 1, "host names ignore case");
        assert!(host("v1.preview.localhost").unwrap().set_cookie.is_none());
        assert_eq!(host("v9.preview.localhost").err(), Some(Unserved::UnknownPreview));
        assert_eq!(host("www.preview.localhost").err(), Some(Unserved::UnknownPreview));
        assert!([7, 8].contains(&host("example.com").unwrap().view.version), "other hosts split as usual");
    }
}
