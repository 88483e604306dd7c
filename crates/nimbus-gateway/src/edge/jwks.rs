//! JSON Web Key sets: decoded once into verification keys, and for a `jwks_url` fetched by the
//! gateway and kept. A remote set is fetched again when it expires (the response's
//! `Cache-Control: max-age`, else [`DEFAULT_TTL`]; in the background, the expired keys serving
//! meanwhile) and at once when a token names a `kid` the set does not have (the request waits
//! for it), so a key rotation at the issuer works without a restart. Refetches are at least
//! [`REFRESH_FLOOR`] apart, whatever tokens arrive (random `kid`s cannot turn the gateway
//! into a load generator against the issuer), and concurrent ones are coalesced into one. A
//! failed fetch keeps the keys it had.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The least time between two fetches of one set.
pub(crate) const REFRESH_FLOOR: Duration = Duration::from_secs(2);
/// How long a set is kept when its response says nothing.
const DEFAULT_TTL: Duration = Duration::from_secs(300);
const MAX_TTL: Duration = Duration::from_secs(3600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWK set larger than this is refused.
const MAX_BYTES: usize = 1 << 20;

/// One verification key and the algorithm its JWK names, if any.
pub(crate) struct Key {
    pub(crate) key: DecodingKey,
    pub(crate) alg: Option<Algorithm>,
}

/// Decoded keys by `kid`; keys without one are tried when a token has no `kid`.
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    anonymous: Vec<Arc<Key>>,
}

impl KeySet {
    /// Decode a JWK set's JSON; keys nimbus cannot use are skipped.
    pub(crate) fn parse(json: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut out = KeySet::default();
        for jwk in &set.keys {
            let Some(key) = decode(jwk) else { continue };
            match &jwk.common.key_id {
                Some(kid) => {
                    out.by_kid.insert(kid.clone(), key);
                }
                None => out.anonymous.push(key),
            }
        }
        Ok(out)
    }

    /// A set of one key (an HMAC secret).
    pub(crate) fn single(key: DecodingKey, alg: Algorithm) -> KeySet {
        KeySet { by_kid: HashMap::new(), anonymous: vec![Arc::new(Key { key, alg: Some(alg) })] }
    }

    /// The keys to try for a token with this `kid` (none: every key).
    pub(crate) fn candidates(&self, kid: Option<&str>) -> Vec<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned().into_iter().collect(),
            None => self.anonymous.iter().chain(self.by_kid.values()).cloned().collect(),
        }
    }
}

fn decode(jwk: &Jwk) -> Option<Arc<Key>> {
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
    Some(Arc::new(Key { key, alg }))
}

/// A set behind a URL.
pub(crate) struct Remote {
    url: String,
    current: RwLock<Fetched>,
    /// Held while fetching, so that concurrent refreshes make one request.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

struct Fetched {
    keys: Arc<KeySet>,
    /// When the last fetch was tried (None: never), and until when its keys are fresh.
    tried: Option<Instant>,
    fresh_until: Option<Instant>,
}

impl Remote {
    pub(crate) fn new(url: String) -> Remote {
        let current = Fetched { keys: Arc::new(KeySet::default()), tried: None, fresh_until: None };
        Remote { url, current: RwLock::new(current), fetching: Arc::new(tokio::sync::Mutex::new(())) }
    }

    /// The keys to try for `kid`: from the kept set when it has them (an expired set is
    /// refetched in the background meanwhile), else after a refetch (if the floor allows one).
    pub(crate) async fn candidates(self: &Arc<Self>, kid: Option<&str>) -> Vec<Arc<Key>> {
        let (keys, stale) = self.snapshot();
        let found = keys.candidates(kid);
        if !found.is_empty() {
            if stale && self.may_fetch() {
                if let Ok(one) = self.fetching.clone().try_lock_owned() {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _one = one;
                        this.fetch().await;
                    });
                }
            }
            return found;
        }
        let _one = self.fetching.lock().await;
        if self.may_fetch() {
            self.fetch().await;
        }
        self.snapshot().0.candidates(kid)
    }

    /// The kept key set, and whether it is stale (its freshness ended, or never fetched).
    pub(crate) fn snapshot(&self) -> (Arc<KeySet>, bool) {
        match self.current.read() {
            Ok(c) => (c.keys.clone(), c.fresh_until.is_none_or(|t| Instant::now() >= t)),
            Err(_) => (Arc::new(KeySet::default()), true),
        }
    }

    fn may_fetch(&self) -> bool {
        self.current.read().is_ok_and(|c| c.tried.is_none_or(|t| t.elapsed() >= REFRESH_FLOOR))
    }

    async fn fetch(&self) {
        let result =
            tokio::time::timeout(FETCH_TIMEOUT, get(&self.url)).await.unwrap_or_else(|_| Err("timed out".into()));
        let now = Instant::now();
        let Ok(mut c) = self.current.write() else { return };
        c.tried = Some(now);
        match result.and_then(|(body, ttl)| Ok((KeySet::parse(&body)?, ttl))) {
            Ok((keys, ttl)) => {
                c.keys = Arc::new(keys);
                c.fresh_until = Some(now + ttl);
            }
            Err(e) => tracing::warn!(url = %self.url, "cannot fetch the JWK set ({e}); keeping the keys it had"),
        }
    }
}

/// GET a JWK set: its body and how long to keep it.
async fn get(url: &str) -> Result<(bytes::Bytes, Duration), String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
        .with_no_client_auth();
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(connector);
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let resp = client.get(uri).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let ttl = max_age(resp.headers()).unwrap_or(DEFAULT_TTL).clamp(REFRESH_FLOOR, MAX_TTL);
    let limited = http_body_util::Limited::new(resp.into_body(), MAX_BYTES);
    let body = limited.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((body, ttl))
}

fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let cc = headers.get(http::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',').find_map(|d| d.trim().strip_prefix("max-age=")?.parse().ok()).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_indexed_by_kid_and_keeps_each_keys_alg() {
        let json = br#"{"keys":[
            {"kty":"oct","kid":"h1","alg":"HS256","k":"czNjcmV0"},
            {"kty":"oct","k":"b3RoZXI"},
            {"kty":"OKP","crv":"Ed25519","kid":"d1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        let set = KeySet::parse(json).unwrap();
        assert_eq!(set.candidates(Some("h1")).len(), 1);
        assert_eq!(set.candidates(Some("h1"))[0].alg, Some(Algorithm::HS256));
        assert!(set.candidates(Some("unknown")).is_empty());
        assert_eq!(set.candidates(None).len(), 3, "a token without kid tries every key");
        assert!(KeySet::parse(b"{\"no\":1}").is_err());
    }

    #[test]
    fn max_age_comes_from_cache_control() {
        let mut h = http::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(http::header::CACHE_CONTROL, "public, max-age=600, must-revalidate".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::from_secs(600)));
    }
}
