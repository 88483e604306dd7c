//! Per-route auth: a JWT (`Authorization: Bearer …`) or an API key, checked before any
//! instance starts. What passes becomes [`Claims`]; what fails is a [`Denied`], answered as 401
//! with `WWW-Authenticate` (RFC 6750 for bearer tokens).
//!
//! A token passes when its header's `alg` is one the policy lists (never `none`), a key of the
//! policy's set verifies its signature with that algorithm and of the key's own type (an RSA key
//! never checks an HMAC signature), `exp` is in the future and `nbf` in the past (within the
//! leeway), `iss` and `aud` are what the policy says, and every required claim is present.
//!
//! A token that passed is remembered (as Envoy's `jwt_authn` cache does): the same token again
//! skips the signature and the claims and only has its time window checked, for as long as the
//! key set it was verified against is the current one (a refreshed or stale JWK set, and so a
//! rotated-out key, sends it through the whole check again).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use jsonwebtoken::{Algorithm, Validation};
use nimbus_manifest::edge::{ApiKeyPolicy, AuthPolicy, JwtKeys, JwtPolicy};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::jwks::{Key, KeySet, Remote};
use super::Claims;

/// Why a request was refused: the `error_description` the client is told.
#[derive(Debug, PartialEq)]
pub(crate) struct Denied {
    /// RFC 6750's `error` (absent when no credential was presented at all).
    pub(crate) error: Option<&'static str>,
    pub(crate) description: String,
}

impl Denied {
    fn invalid(description: impl Into<String>) -> Denied {
        Denied { error: Some("invalid_token"), description: description.into() }
    }

    /// The `WWW-Authenticate` value for a policy of this kind and name.
    pub(crate) fn challenge(&self, bearer: bool, realm: &str) -> String {
        let scheme = if bearer { "Bearer" } else { "ApiKey" };
        let mut out = format!("{scheme} realm=\"{realm}\"");
        if let Some(e) = self.error {
            let d: String = self.description.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
            out.push_str(&format!(", error=\"{e}\", error_description=\"{d}\""));
        }
        out
    }
}

/// A policy ready to check requests.
pub(crate) enum Verifier {
    Jwt(Box<Jwt>),
    ApiKey { header: http::HeaderName, digests: HashSet<[u8; 32]> },
}

pub(crate) struct Jwt {
    policy: JwtPolicy,
    /// The accepted algorithms, each with its validation settings (built once, not per request).
    algorithms: Vec<(Algorithm, Validation)>,
    keys: Keys,
    /// Tokens that passed lately, by their text.
    verified: Mutex<HashMap<String, Verified>>,
}

/// A token that passed: its claims, the Unix seconds it stays acceptable within (leeway
/// included), and the JWK set it was verified against (`None`: a fixed key set).
struct Verified {
    claims: Claims,
    from: u64,
    until: u64,
    keys: Option<Arc<KeySet>>,
}

/// Most tokens remembered per policy (past it the memory is emptied), and the longest one.
const MAX_VERIFIED: usize = 4096;
const MAX_VERIFIED_LEN: usize = 4096;

enum Keys {
    Fixed(KeySet),
    Remote(Arc<Remote>),
    /// The policy cannot verify anything (its secret is not set); every token is refused.
    Broken(String),
}

impl Verifier {
    /// `remote` gives the shared cache of a `jwks_url` (one per URL, kept across deploys).
    pub(crate) fn new(policy: &AuthPolicy, remote: &dyn Fn(&str) -> Arc<Remote>) -> Verifier {
        match policy {
            AuthPolicy::Jwt(j) => Verifier::Jwt(Box::new(Jwt::new(j, remote))),
            AuthPolicy::ApiKey(k) => api_key(k),
        }
    }

    pub(crate) fn is_bearer(&self) -> bool {
        matches!(self, Verifier::Jwt(_))
    }

    /// Check a request's credential. The claims of a JWT, or `{"apiKeyId": …}` for an API key.
    pub(crate) async fn check(&self, headers: &HeaderMap) -> Result<Claims, Denied> {
        match self {
            Verifier::Jwt(j) => j.check(headers).await,
            Verifier::ApiKey { header, digests } => {
                let Some(key) = headers.get(header) else {
                    return Err(Denied { error: None, description: format!("no API key in {header}") });
                };
                let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
                if !digests.contains(&digest) {
                    return Err(Denied::invalid("the API key is not valid"));
                }
                let id = hex::encode(digest.get(..6).unwrap_or_default());
                Ok(Claims(Map::from_iter([("apiKeyId".to_owned(), Value::String(id))])))
            }
        }
    }

    /// The claim → header pairs to forward (JWT only).
    pub(crate) fn forwarded(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        match self {
            Verifier::Jwt(j) => Some(&j.policy.forward_claims),
            Verifier::ApiKey { .. } => None,
        }
    }
}

fn api_key(k: &ApiKeyPolicy) -> Verifier {
    let mut digests: HashSet<[u8; 32]> =
        k.keys_sha256.iter().filter_map(|d| hex::decode(d).ok().and_then(|b| <[u8; 32]>::try_from(b).ok())).collect();
    if let Some(var) = &k.keys_env {
        match std::env::var(var) {
            Ok(list) => digests.extend(
                list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| <[u8; 32]>::from(Sha256::digest(s))),
            ),
            Err(_) => tracing::warn!("API keys: the environment variable {var} is not set on the server"),
        }
    }
    let header = http::HeaderName::try_from(k.header.as_str()).unwrap_or(http::HeaderName::from_static("x-api-key"));
    Verifier::ApiKey { header, digests }
}

impl Jwt {
    fn new(policy: &JwtPolicy, remote: &dyn Fn(&str) -> Arc<Remote>) -> Jwt {
        let algorithms = policy
            .algorithms
            .iter()
            .filter_map(|a| a.parse::<Algorithm>().ok())
            .map(|a| (a, validation(policy, a)))
            .collect();
        let keys = match &policy.keys {
            JwtKeys::JwksUrl(url) => Keys::Remote(remote(url)),
            JwtKeys::Jwks(json) => match KeySet::parse(json.as_bytes()) {
                Ok(set) => Keys::Fixed(set),
                Err(e) => Keys::Broken(e),
            },
            JwtKeys::JwksFile(path) => Keys::Broken(format!("the JWK set file {path} was not read at deploy")),
            JwtKeys::SecretEnv(var) => match std::env::var(var) {
                Ok(s) if !s.is_empty() => {
                    Keys::Fixed(KeySet::single(jsonwebtoken::DecodingKey::from_secret(s.as_bytes()), Algorithm::HS256))
                }
                _ => Keys::Broken(format!("the secret's environment variable {var} is not set on the server")),
            },
        };
        if let Keys::Broken(why) = &keys {
            tracing::warn!("a JWT policy refuses every token: {why}");
        }
        Jwt { policy: policy.clone(), algorithms, keys, verified: Mutex::new(HashMap::new()) }
    }

    async fn check(&self, headers: &HeaderMap) -> Result<Claims, Denied> {
        let token = bearer(headers)?;
        if let Some(claims) = self.remembered(token, jsonwebtoken::get_current_timestamp()) {
            return Ok(claims);
        }
        let keys = match &self.keys {
            Keys::Remote(r) => Some(r.snapshot().0),
            _ => None,
        };
        let claims = self.check_whole(token).await?;
        self.remember(token, &claims, keys);
        Ok(claims)
    }

    /// The claims of `token` if it passed lately, is within its time window at `now` (Unix
    /// seconds) and was verified against the current, fresh key set.
    fn remembered(&self, token: &str, now: u64) -> Option<Claims> {
        let map = self.verified.lock().ok()?;
        let v = map.get(token).filter(|v| v.from <= now && now <= v.until)?;
        if let (Keys::Remote(r), Some(set)) = (&self.keys, &v.keys) {
            let (current, stale) = r.snapshot();
            if stale || !Arc::ptr_eq(&current, set) {
                return None;
            }
        }
        Some(v.claims.clone())
    }

    fn remember(&self, token: &str, claims: &Claims, keys: Option<Arc<KeySet>>) {
        let seconds = |name: &str| claims.0.get(name).and_then(Value::as_u64);
        let (Some(exp), true) = (seconds("exp"), token.len() <= MAX_VERIFIED_LEN) else { return };
        let leeway = self.policy.leeway_s;
        let from = seconds("nbf").map_or(0, |nbf| nbf.saturating_sub(leeway));
        let entry = Verified { claims: claims.clone(), from, until: exp.saturating_add(leeway), keys };
        if let Ok(mut map) = self.verified.lock() {
            if map.len() >= MAX_VERIFIED {
                map.clear();
            }
            map.insert(token.to_owned(), entry);
        }
    }

    /// The whole check: header, algorithm, keys, signature, claims.
    async fn check_whole(&self, token: &str) -> Result<Claims, Denied> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Denied::invalid("the token's header is not valid or names an unsupported algorithm"))?;
        let Some((_, validation)) = self.algorithms.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Denied::invalid(format!("the algorithm {:?} is not accepted", header.alg)));
        };
        let candidates = match &self.keys {
            Keys::Fixed(set) => set.candidates(header.kid.as_deref()),
            Keys::Remote(r) => r.candidates(header.kid.as_deref()).await,
            Keys::Broken(_) => Vec::new(),
        };
        let usable = candidates.into_iter().filter(|k| k.alg.is_none_or(|a| a == header.alg));
        let mut last = Denied::invalid("no key verifies the token");
        for key in usable {
            match self.verify(token, &key, validation) {
                Ok(claims) => return Ok(claims),
                Err(d) => last = d,
            }
        }
        Err(last)
    }

    fn verify(&self, token: &str, key: &Key, validation: &Validation) -> Result<Claims, Denied> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation).map_err(|e| {
            Denied::invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                ErrorKind::InvalidAudience => "the token is not for this audience",
                ErrorKind::InvalidIssuer => "the token is from another issuer",
                ErrorKind::InvalidSignature => "the signature does not verify",
                ErrorKind::MissingRequiredClaim(_) => "the token has no exp",
                ErrorKind::InvalidAlgorithm => "the key is not of the token's algorithm",
                _ => "the token is not valid",
            })
        })?;
        if let Some(missing) = self.policy.required_claims.iter().find(|c| !data.claims.contains_key(c.as_str())) {
            return Err(Denied::invalid(format!("the token has no {missing} claim")));
        }
        Ok(Claims(data.claims))
    }
}

/// What `jsonwebtoken` checks of a token of `alg` under `policy`.
fn validation(policy: &JwtPolicy, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = policy.leeway_s;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp"]);
    if let Some(iss) = &policy.issuer {
        v.set_issuer(&[iss]);
    }
    if policy.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&policy.audience);
    }
    v
}

fn bearer(headers: &HeaderMap) -> Result<&str, Denied> {
    let missing = || Denied { error: None, description: "no bearer token".to_owned() };
    let value = headers.get(http::header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| Denied::invalid("the Authorization header is not text"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(missing()),
    }
}

/// A claim as a header value or an event claim: strings as they are, other values as JSON.
pub(crate) fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// API Gateway's `requestContext.authorizer.jwt`: the claims as strings, and the `scope`
/// claim split on spaces (`scopes`, null when there is none).
pub(crate) fn authorizer(claims: &Claims) -> Value {
    let as_text: Map<String, Value> = claims.0.iter().map(|(k, v)| (k.clone(), Value::String(claim_text(v)))).collect();
    let scopes = match claims.0.get("scope") {
        Some(Value::String(s)) => Value::Array(s.split_whitespace().map(|x| Value::String(x.to_owned())).collect()),
        _ => Value::Null,
    };
    serde_json::json!({"jwt": {"claims": as_text, "scopes": scopes}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn policy() -> JwtPolicy {
        JwtPolicy {
            // The secret "s3cret" as a JWK ("czNjcmV0" is its base64url).
            keys: JwtKeys::Jwks(r#"{"keys":[{"kty":"oct","k":"czNjcmV0"}]}"#.into()),
            issuer: Some("iss".into()),
            audience: vec!["api".into()],
            leeway_s: 0,
            required_claims: vec!["sub".into()],
            algorithms: vec!["HS256".into()],
            forward_claims: Default::default(),
        }
    }

    fn token(claims: Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"s3cret")).unwrap()
    }

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    #[tokio::test]
    async fn hs256_tokens_are_checked_claim_by_claim() {
        let v = Verifier::new(&AuthPolicy::Jwt(policy()), &|u| Arc::new(Remote::new(u.into())));
        let now = jsonwebtoken::get_current_timestamp();
        let good = serde_json::json!({"sub": "u1", "iss": "iss", "aud": "api", "exp": now + 60, "scope": "a b"});
        let claims = v.check(&headers(&token(good.clone()))).await.unwrap();
        assert_eq!(claims.0.get("sub"), Some(&Value::String("u1".into())));
        assert_eq!(authorizer(&claims)["jwt"]["scopes"], serde_json::json!(["a", "b"]));
        let cases = [
            (serde_json::json!({"exp": now - 60}), "expired"),
            (serde_json::json!({"aud": "other"}), "audience"),
            (serde_json::json!({"iss": "other"}), "issuer"),
            (serde_json::json!({"nbf": now + 600}), "not valid yet"),
        ];
        for (change, want) in cases {
            let mut c = good.clone();
            c.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
            let err = v.check(&headers(&token(c))).await.unwrap_err();
            assert!(err.description.contains(want), "{want}: {err:?}");
        }
        let mut no_sub = good.clone();
        no_sub.as_object_mut().unwrap().remove("sub");
        assert!(v.check(&headers(&token(no_sub))).await.unwrap_err().description.contains("sub"));
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", token(good).split('.').nth(1).unwrap());
        assert!(v.check(&headers(&none)).await.is_err(), "alg none is refused");
        assert_eq!(v.check(&HeaderMap::new()).await.unwrap_err().error, None);
    }

    #[tokio::test]
    async fn a_token_that_passed_is_remembered_within_its_time_window_only() {
        let Verifier::Jwt(jwt) = Verifier::new(&AuthPolicy::Jwt(policy()), &|u| Arc::new(Remote::new(u.into()))) else {
            panic!("a JWT policy")
        };
        let now = jsonwebtoken::get_current_timestamp();
        let good = token(serde_json::json!({"sub": "u1", "iss": "iss", "aud": "api", "nbf": now - 5, "exp": now + 60}));
        assert!(jwt.remembered(&good, now).is_none(), "not before it passed");
        let claims = jwt.check(&headers(&good)).await.unwrap();
        assert_eq!(jwt.remembered(&good, now), Some(claims.clone()));
        assert_eq!(jwt.check(&headers(&good)).await.unwrap(), claims, "the same token passes again");
        assert!(jwt.remembered(&good, now + 61).is_none(), "past exp it is checked again (and refused)");
        assert!(jwt.remembered(&good, now - 6).is_none(), "before nbf likewise");
        let refused = token(serde_json::json!({"iss": "iss", "aud": "api", "exp": now + 60}));
        assert!(jwt.check(&headers(&refused)).await.is_err());
        assert!(jwt.remembered(&refused, now).is_none(), "a refused token is not remembered");
    }

    #[tokio::test]
    async fn api_keys_are_compared_by_digest() {
        let digest = hex::encode(Sha256::digest(b"k-123"));
        let p = ApiKeyPolicy { header: "x-api-key".into(), keys_sha256: vec![digest], keys_env: None };
        let v = Verifier::new(&AuthPolicy::ApiKey(p), &|u| Arc::new(Remote::new(u.into())));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k-123".parse().unwrap());
        assert!(v.check(&h).await.is_ok());
        h.insert("x-api-key", "k-124".parse().unwrap());
        assert!(v.check(&h).await.is_err());
    }
}
