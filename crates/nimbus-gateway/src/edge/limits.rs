//! `rate_limit = "NAME"`: a fixed-window token bucket per key, counted in the KV store so every
//! instance (and, with a shared KV backend, every node) draws on one count.
//!
//! Each key gets `requests` tokens per window of `per`; windows are aligned to multiples of
//! `per` since the Unix epoch, so every gateway agrees on them without talking. Taking a token
//! is one atomic `increment_volatile` of the window's counter (created with a TTL of the
//! window; answered before it is durable: a restart may forget a window's count); the
//! request passes when the sum is at most `requests`. That is the only synchronisation, so the
//! count is exact under any concurrency: N requests in a window pass exactly
//! `min(N, requests)`. Once a counter is seen past the limit, this gateway refuses the key
//! locally until the window ends (the count only grows within a window, so that stays exact
//! and an abusive client costs no KV write).
//!
//! Refusals are 429 with `Retry-After` and the `RateLimit-Policy` / `RateLimit` headers of
//! draft-ietf-httpapi-ratelimit-headers (the structured-field form: `"NAME";q=100;w=60` and
//! `"NAME";r=0;t=42`); passing responses carry them too. When the KV store fails the request
//! passes (logged): a broken counter store should not take the app down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use nimbus_core::KvStore;
use nimbus_manifest::{LimitKey, RateLimitSpec};
use sha2::{Digest, Sha256};

use super::Claims;

/// The KV namespace of the counters. `:` is not allowed in the names apps declare, so no app
/// can read or write it.
pub(crate) const NAMESPACE: &str = "nimbus:rate-limits";
/// Longest key value kept as written in a counter's key; longer ones are hashed.
const MAX_PLAIN: usize = 128;
/// How many exhausted keys the local refusal set holds before it is emptied.
const MAX_EXHAUSTED: usize = 100_000;

/// Where one request stands against its route's limit (what the headers say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Standing {
    pub name: String,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window ends (at least 1).
    pub reset: u64,
    pub passed: bool,
}

impl Standing {
    /// `RateLimit-Policy`, `RateLimit` and, when refused, `Retry-After`.
    pub(crate) fn headers(&self, per: Duration) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("ratelimit-policy", format!("\"{}\";q={};w={}", self.name, self.limit, per.as_secs())),
            ("ratelimit", format!("\"{}\";r={};t={}", self.name, self.remaining, self.reset)),
        ];
        if !self.passed {
            out.push(("retry-after", self.reset.to_string()));
        }
        out
    }
}

/// The counters' front: the KV store plus the local set of keys known to be exhausted.
pub(crate) struct Limiter {
    kv: Arc<dyn KvStore>,
    namespace: tokio::sync::OnceCell<()>,
    /// Counter key → the window it is exhausted in.
    exhausted: Mutex<HashMap<String, u64>>,
}

impl Limiter {
    pub(crate) fn new(kv: Arc<dyn KvStore>) -> Self {
        Limiter { kv, namespace: tokio::sync::OnceCell::new(), exhausted: Mutex::new(HashMap::new()) }
    }

    /// Take a token for this request at `now_s` (Unix seconds).
    pub(crate) async fn take(&self, spec: &RateLimitSpec, who: &str, now_s: u64) -> Standing {
        let per = spec.per.as_secs().max(1);
        let window = now_s / per;
        let reset = ((window + 1) * per).saturating_sub(now_s).max(1);
        let key = format!("{}/{window}/{who}", spec.name);
        let standing = |count: u64| Standing {
            name: spec.name.clone(),
            limit: spec.requests,
            remaining: u32::try_from(u64::from(spec.requests).saturating_sub(count)).unwrap_or(0),
            reset,
            passed: count <= u64::from(spec.requests),
        };
        if self.is_exhausted(&key, window) {
            return standing(u64::MAX);
        }
        match self.increment(&key, Duration::from_secs(reset + 1)).await {
            Ok(count) => {
                let count = u64::try_from(count).unwrap_or(0);
                if count >= u64::from(spec.requests) {
                    self.mark_exhausted(key, window);
                }
                standing(count)
            }
            Err(e) => {
                tracing::warn!(limit = %spec.name, "rate limit not applied, the KV store failed: {e}");
                standing(0)
            }
        }
    }

    async fn increment(&self, key: &str, ttl: Duration) -> Result<i64, nimbus_core::KvError> {
        self.namespace.get_or_try_init(|| async { self.kv.create_namespace(NAMESPACE).await.map(|_| ()) }).await?;
        self.kv.increment_volatile(NAMESPACE, key, 1, Some(ttl)).await
    }

    fn is_exhausted(&self, key: &str, window: u64) -> bool {
        self.exhausted.lock().map(|m| m.get(key) == Some(&window)).unwrap_or(false)
    }

    /// Remember a key that has no tokens left in `window`. At exactly the limit the last token
    /// went to this request: the next one is refused without asking the store.
    fn mark_exhausted(&self, key: String, window: u64) {
        if let Ok(mut m) = self.exhausted.lock() {
            if m.len() >= MAX_EXHAUSTED {
                m.retain(|_, w| *w >= window);
                if m.len() >= MAX_EXHAUSTED {
                    m.clear();
                }
            }
            m.insert(key, window);
        }
    }
}

/// Who a request counts as under `key`: the client address, a header's value or a claim's
/// (absent: one shared empty key). Long values are hashed so the counter key stays short.
pub(crate) fn who(key: &LimitKey, headers: &HeaderMap, client: IpAddr, claims: Option<&Claims>) -> String {
    let (kind, value) = match key {
        LimitKey::Ip => ("ip", client.to_string()),
        LimitKey::Header(name) => {
            let v = headers.get(name.as_str()).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            ("h", v.unwrap_or_default())
        }
        LimitKey::Claim(name) => {
            let v = claims.and_then(|c| c.0.get(name)).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            ("c", v.unwrap_or_default())
        }
    };
    if value.len() > MAX_PLAIN {
        format!("{kind}#{}", hex::encode(Sha256::digest(value.as_bytes())))
    } else {
        format!("{kind}={value}")
    }
}

/// The limits step of a route: `Ok(None)` without a limit, `Ok(Some(..))` with the headers to
/// put on the response, `Err` the 429 to answer with.
pub(crate) async fn step(
    limiter: &Limiter,
    route: &nimbus_manifest::RouteSpec,
    headers: &HeaderMap,
    extensions: &http::Extensions,
    remote: std::net::SocketAddr,
) -> Result<Option<Vec<(&'static str, String)>>, crate::util::Resp> {
    let Some(spec) = &route.rate_limit else { return Ok(None) };
    let client = super::client::client_ip(headers, remote);
    // The auth step leaves the verified claims in the request's extensions.
    let who = who(&spec.key, headers, client, extensions.get::<Claims>());
    let standing = limiter.take(spec, &who, nimbus_core::ids::now_ms() / 1000).await;
    let out = standing.headers(spec.per);
    if standing.passed {
        return Ok(Some(out));
    }
    let mut r = crate::util::json(
        http::StatusCode::TOO_MANY_REQUESTS,
        &serde_json::json!({"message": "Too Many Requests", "limit": spec.name}),
    );
    crate::util::set_header(&mut r, "x-nimbus-error", "client");
    for (name, value) in &out {
        crate::util::set_header(&mut r, *name, value);
    }
    Err(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A KV store that only counts (what the limiter uses), yielding between its steps so
    /// concurrent callers interleave.
    #[derive(Default)]
    struct Counters(Mutex<HashMap<String, i64>>);

    #[async_trait::async_trait]
    impl KvStore for Counters {
        async fn create_namespace(&self, _: &str) -> Result<bool, nimbus_core::KvError> {
            Ok(true)
        }
        async fn delete_namespace(&self, _: &str) -> Result<bool, nimbus_core::KvError> {
            unimplemented!()
        }
        async fn namespaces(&self) -> Result<Vec<nimbus_core::kv::KvNamespace>, nimbus_core::KvError> {
            unimplemented!()
        }
        async fn get(&self, _: &str, _: &str) -> Result<Option<nimbus_core::kv::KvEntry>, nimbus_core::KvError> {
            unimplemented!()
        }
        async fn put(
            &self,
            _: &str,
            _: &str,
            _: bytes::Bytes,
            _: Option<Duration>,
        ) -> Result<u64, nimbus_core::KvError> {
            unimplemented!()
        }
        async fn delete(&self, _: &str, _: &str) -> Result<bool, nimbus_core::KvError> {
            unimplemented!()
        }
        async fn list(
            &self,
            _: &str,
            _: &str,
            _: Option<&str>,
            _: usize,
        ) -> Result<nimbus_core::kv::KvPage, nimbus_core::KvError> {
            unimplemented!()
        }
        async fn increment(
            &self,
            _: &str,
            key: &str,
            by: i64,
            _: Option<Duration>,
        ) -> Result<i64, nimbus_core::KvError> {
            tokio::task::yield_now().await;
            let mut m = self.0.lock().unwrap();
            let v = m.entry(key.to_owned()).or_default();
            *v += by;
            Ok(*v)
        }
        async fn compare_and_swap(
            &self,
            _: &str,
            _: &str,
            _: Option<u64>,
            _: bytes::Bytes,
            _: Option<Duration>,
        ) -> Result<nimbus_core::kv::CasOutcome, nimbus_core::KvError> {
            unimplemented!()
        }
    }

    #[test]
    fn who_by_key() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k1".parse().unwrap());
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let mut claims = Claims::default();
        claims.0.insert("sub".into(), serde_json::json!("alice"));
        claims.0.insert("org".into(), serde_json::json!(42));
        assert_eq!(who(&LimitKey::Ip, &h, ip, None), "ip=10.0.0.7");
        assert_eq!(who(&LimitKey::Header("x-api-key".into()), &h, ip, None), "h=k1");
        assert_eq!(who(&LimitKey::Header("x-other".into()), &h, ip, None), "h=");
        assert_eq!(who(&LimitKey::Claim("sub".into()), &h, ip, Some(&claims)), "c=alice");
        assert_eq!(who(&LimitKey::Claim("org".into()), &h, ip, Some(&claims)), "c=42");
        assert_eq!(who(&LimitKey::Claim("sub".into()), &h, ip, None), "c=");
        h.insert("x-api-key", "k".repeat(200).parse().unwrap());
        assert!(who(&LimitKey::Header("x-api-key".into()), &h, ip, None).starts_with("h#"));
    }

    #[test]
    fn headers_follow_the_draft() {
        let s = Standing { name: "api".into(), limit: 100, remaining: 0, reset: 42, passed: false };
        assert_eq!(
            s.headers(Duration::from_secs(60)),
            [
                ("ratelimit-policy", "\"api\";q=100;w=60".to_owned()),
                ("ratelimit", "\"api\";r=0;t=42".to_owned()),
                ("retry-after", "42".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn exact_under_concurrency_and_refused_locally_once_spent() {
        let kv: Arc<dyn KvStore> = Arc::new(Counters::default());
        let limiter = Arc::new(Limiter::new(kv));
        let spec = RateLimitSpec { name: "l".into(), requests: 10, per: Duration::from_secs(60), key: LimitKey::Ip };
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (limiter, spec) = (limiter.clone(), spec.clone());
            tasks.push(tokio::spawn(async move { limiter.take(&spec, "ip=1", 600).await.passed }));
        }
        let mut passed = 0;
        for t in tasks {
            passed += usize::from(t.await.unwrap());
        }
        assert_eq!(passed, 10);
        assert!(limiter.is_exhausted("l/10/ip=1", 10));
        let next = limiter.take(&spec, "ip=1", 659).await;
        assert_eq!((next.passed, next.remaining, next.reset), (false, 0, 1));
        assert!(limiter.take(&spec, "ip=1", 660).await.passed, "a new window has new tokens");
    }
}
