//! Access keys and what each may touch. Every key maps to a principal: the admin (every bucket
//! and queue, their creation and deletion) or a set of grants (`nimbus_core::Grants`' buckets
//! and queues). The S3 layer asks [`KeyRing::check`] before every operation (SQS checks queue
//! grants itself, [`crate::sqs`]); a refusal is `AccessDenied` and is logged with the key id,
//! the bucket or queue, and the operation.
//!
//! The ring holds the keys nimbus hands out itself (the admin pair, per-instance keys); keys
//! managed with `nimbus keys` are looked up on a miss in an [`AccessKeySource`] (the control
//! plane's in-memory set), checked for revocation and expiry against the clock on every
//! lookup, and act for [`Principal::Grants`] exactly like an instance's key.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;
use nimbus_core::{AccessKeyRecord, AccessKeySource, Grants, Op};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};

/// Who a key acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Everything.
    Admin,
    /// Only what these grants allow (their buckets, and the functions the Invoke API may call).
    Grants(Grants),
}

impl Principal {
    /// Whether the principal may do `op` on the objects of `bucket`.
    pub fn may(&self, bucket: &str, op: Op) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Grants(g) => g.may_use_bucket(bucket, op),
        }
    }

    /// Whether a bucket shows in this principal's ListBuckets.
    pub fn sees(&self, bucket: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Grants(g) => g.buckets.contains_key(bucket),
        }
    }
}

struct Key {
    secret: String,
    principal: Principal,
    /// The session token requests signed with this key must carry (`x-amz-security-token`):
    /// set for the keys issued to instances, as AWS's temporary credentials have one.
    session_token: Option<String>,
}

/// The keys the AWS port accepts (shared: the runtime adds per-instance keys while it runs).
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: Arc<RwLock<HashMap<String, Key>>>,
    /// Managed keys (`nimbus keys`), asked when `keys` does not have the id.
    managed: Arc<OnceLock<Arc<dyn AccessKeySource>>>,
}

impl KeyRing {
    pub fn new() -> Self {
        KeyRing::default()
    }

    /// Accept a key (replacing one with the same id).
    pub fn insert(&self, id: &str, secret: &str, principal: Principal) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.insert(id.to_owned(), Key { secret: secret.to_owned(), principal, session_token: None });
    }

    /// Accept a key whose requests must carry `session_token` (see [`KeyRing::check_token`]).
    pub fn insert_session(&self, id: &str, secret: &str, session_token: &str, principal: Principal) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let key = Key { secret: secret.to_owned(), principal, session_token: Some(session_token.to_owned()) };
        keys.insert(id.to_owned(), key);
    }

    /// Refuse a request signed with `key_id` whose session token (`presented`) is not the one
    /// the key was issued with: a key with a token is only valid together with it, and a token
    /// never makes another key valid. Keys without a token ignore one.
    pub fn check_token(&self, key_id: &str, presented: Option<&str>) -> S3Result<()> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let Some(expected) = keys.get(key_id).and_then(|k| k.session_token.as_deref()) else {
            return Ok(());
        };
        if presented == Some(expected) {
            return Ok(());
        }
        tracing::warn!(key_id, "AWS port: a request with a session token that is not its key's was refused");
        Err(s3_error!(
            InvalidToken,
            "the session token is missing or is not the one issued with access key {key_id}; sign with the AWS_SESSION_TOKEN given with the key"
        ))
    }

    /// Stop accepting a key; whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        self.keys.write().unwrap_or_else(|e| e.into_inner()).remove(id).is_some()
    }

    /// Look up managed keys in `source` from now on (every clone of this ring does). Set once;
    /// a second source is refused (returns false).
    pub fn set_managed(&self, source: Arc<dyn AccessKeySource>) -> bool {
        self.managed.set(source).is_ok()
    }

    /// A managed key that is usable now (not revoked, not expired).
    fn managed(&self, id: &str) -> Option<Arc<AccessKeyRecord>> {
        let key = self.managed.get()?.access_key(id)?;
        key.usable(nimbus_core::ids::now_ms()).then_some(key)
    }

    /// A key's secret, if the key is known (and, for a managed key, usable now).
    pub fn secret(&self, id: &str) -> Option<String> {
        let held = self.keys.read().unwrap_or_else(|e| e.into_inner()).get(id).map(|k| k.secret.clone());
        held.or_else(|| self.managed(id).map(|k| k.secret.clone()))
    }

    /// A key's principal, if the key is known (and, for a managed key, usable now).
    pub fn principal(&self, id: &str) -> Option<Principal> {
        let held = self.keys.read().unwrap_or_else(|e| e.into_inner()).get(id).map(|k| k.principal.clone());
        held.or_else(|| self.managed(id).map(|k| Principal::Grants(k.grants.clone())))
    }

    /// Refuse (and log) an operation the key's principal may not do. `bucket` is `None` for
    /// operations on the account (ListBuckets); `op` is `None` for operations only the admin
    /// may do (creating and deleting buckets, bucket configuration).
    pub fn check(&self, key_id: &str, bucket: Option<&str>, op: Option<Op>, operation: &str) -> S3Result<()> {
        let allowed = match self.principal(key_id) {
            None => false,
            Some(Principal::Admin) => true,
            Some(p) => match (bucket, op) {
                (None, Some(Op::Read)) => true,
                (Some(b), Some(op)) => p.may(b, op),
                _ => false,
            },
        };
        if allowed {
            return Ok(());
        }
        let bucket = bucket.unwrap_or("");
        tracing::warn!(key_id, bucket, operation, "AWS port: access denied (the key has no grant for it)");
        Err(s3_error!(AccessDenied, "the access key {key_id} may not {operation} on bucket \"{bucket}\""))
    }
}

#[async_trait]
impl S3Auth for KeyRing {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.secret(access_key) {
            Some(s) => Ok(SecretKey::from(s)),
            None => Err(s3_error!(InvalidAccessKeyId, "the access key {access_key} is not one nimbus issued")),
        }
    }
}

/// The session token a request carries: the `x-amz-security-token` header, or the
/// `X-Amz-Security-Token` query parameter of a presigned URL.
fn presented_token(cx: &S3AccessContext<'_>) -> Option<String> {
    if let Some(v) = cx.headers().get("x-amz-security-token") {
        return v.to_str().ok().map(str::to_owned);
    }
    cx.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.eq_ignore_ascii_case("X-Amz-Security-Token")
            .then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

/// s3s's access hook, run after the signature is verified and before any operation: the
/// request must be signed, and a key issued with a session token needs that token.
pub(crate) struct SessionTokens(pub(crate) KeyRing);

#[async_trait]
impl S3Access for SessionTokens {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "the request is not signed; sign it with a nimbus access key"));
        };
        let key = creds.access_key.clone();
        self.0.check_token(&key, presented_token(cx).as_deref())
    }
}

/// A fresh key pair in AWS's shapes: a 20-character id starting with `prefix` and a 40-character
/// secret.
pub fn generate(prefix: &str) -> (String, String) {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // Both sets have a power-of-two size, so a byte modulo the size is uniform.
    let pick = |set: &[u8], n: usize| -> String {
        let bytes: [u8; 40] = rand::random();
        bytes.iter().take(n).map(|b| set.get(usize::from(*b) % set.len()).map_or('A', |c| char::from(*c))).collect()
    };
    let id = format!("{prefix}{}", pick(UPPER, 20usize.saturating_sub(prefix.len())));
    let secret = pick(SECRET, 40);
    (id, secret)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use nimbus_core::Access;
    use std::collections::BTreeMap;

    #[test]
    fn grants_allow_exactly_what_they_say() {
        let ring = KeyRing::new();
        ring.insert("ADMIN", "s", Principal::Admin);
        let buckets = BTreeMap::from([("r".to_owned(), Access::Read), ("w".to_owned(), Access::Write)]);
        ring.insert("FN", "s", Principal::Grants(Grants { buckets, ..Grants::default() }));
        assert!(ring.check("ADMIN", Some("any"), None, "CreateBucket").is_ok());
        assert!(ring.check("FN", Some("r"), Some(Op::Read), "GetObject").is_ok());
        assert!(ring.check("FN", Some("r"), Some(Op::Write), "PutObject").is_err());
        assert!(ring.check("FN", Some("w"), Some(Op::Write), "PutObject").is_ok());
        assert!(ring.check("FN", Some("other"), Some(Op::Read), "GetObject").is_err());
        assert!(ring.check("FN", Some("r"), None, "DeleteBucket").is_err());
        assert!(ring.check("FN", None, Some(Op::Read), "ListBuckets").is_ok());
        assert!(ring.check("NOPE", Some("r"), Some(Op::Read), "GetObject").is_err());
        assert!(ring.remove("FN"));
        assert!(ring.check("FN", Some("r"), Some(Op::Read), "GetObject").is_err());
    }

    struct Managed(Vec<AccessKeyRecord>);

    impl AccessKeySource for Managed {
        fn access_key(&self, id: &str) -> Option<Arc<AccessKeyRecord>> {
            self.0.iter().find(|k| k.id == id).cloned().map(Arc::new)
        }
    }

    #[test]
    fn managed_keys_are_found_on_a_miss_and_refused_once_revoked_or_expired() {
        let record = |id: &str, expires_ms: Option<u64>, revoked_ms: Option<u64>| AccessKeyRecord {
            id: id.into(),
            secret: format!("secret-{id}"),
            name: "ci".into(),
            grants: Grants { buckets: BTreeMap::from([("r".to_owned(), Access::Read)]), ..Grants::default() },
            created_ms: 0,
            expires_ms,
            revoked_ms,
        };
        let ring = KeyRing::new();
        let clone = ring.clone();
        assert!(ring.set_managed(Arc::new(Managed(vec![
            record("LIVE", None, None),
            record("LATER", Some(u64::MAX), None),
            record("GONE", None, Some(1)),
            record("OLD", Some(1), None),
        ]))));
        assert!(!ring.set_managed(Arc::new(Managed(vec![]))), "set once");
        assert_eq!(clone.secret("LIVE").as_deref(), Some("secret-LIVE"), "clones share the source");
        assert_eq!(ring.secret("LATER").as_deref(), Some("secret-LATER"));
        assert!(ring.check("LIVE", Some("r"), Some(Op::Read), "GetObject").is_ok());
        assert!(ring.check("LIVE", Some("r"), Some(Op::Write), "PutObject").is_err());
        assert!(ring.check("LIVE", Some("x"), Some(Op::Read), "GetObject").is_err());
        assert!(ring.check("LIVE", Some("r"), None, "CreateBucket").is_err());
        for gone in ["GONE", "OLD", "NONE"] {
            assert_eq!(ring.secret(gone), None, "{gone}");
            assert_eq!(ring.principal(gone), None, "{gone}");
        }
        ring.insert("LIVE", "held", Principal::Admin);
        assert_eq!(ring.secret("LIVE").as_deref(), Some("held"), "keys held by the ring come first");
    }

    #[test]
    fn a_session_key_needs_its_own_token() {
        let ring = KeyRing::new();
        ring.insert("ADMIN", "s", Principal::Admin);
        ring.insert_session("TEMP", "s", "tok", Principal::Admin);
        assert!(ring.check_token("ADMIN", None).is_ok());
        assert!(ring.check_token("ADMIN", Some("anything")).is_ok());
        assert!(ring.check_token("TEMP", Some("tok")).is_ok());
        for presented in [None, Some("other"), Some("")] {
            let e = ring.check_token("TEMP", presented).unwrap_err();
            assert_eq!(e.code(), &s3s::S3ErrorCode::InvalidToken, "{presented:?}");
        }
    }

    #[test]
    fn generated_keys_have_aws_shapes() {
        let (id, secret) = generate("NIMB");
        assert_eq!(id.len(), 20);
        assert!(id.starts_with("NIMB"));
        assert_eq!(secret.len(), 40);
        assert_ne!(generate("NIMB"), (id, secret));
    }
}
