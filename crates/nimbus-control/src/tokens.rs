//! API tokens as the request path sees them: an in-memory set keyed by the digest of each
//! token's secret, loaded from the registry at start and replaced (one pointer swap) after every
//! create and revoke, so that checking a credential never reads the store. Revoked tokens are
//! not in the set; expired ones are (they are listed as expired and refused by the caller's
//! clock check, so expiry needs no restart and no sweep).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nimbus_core::auth::{mint_token, new_token_id};
use nimbus_core::{RegistryError, Scope, TokenDigest, TokenRecord};

/// Longest token name accepted.
pub const MAX_NAME: usize = 200;
/// Most functions one token may name.
pub const MAX_FUNCTIONS: usize = 100;

/// A token in the in-memory set, with when it was last used (since this process started: the
/// time is kept in memory only, because writing it per request would put the store on the
/// request path).
#[derive(Debug)]
pub struct LiveToken {
    pub record: TokenRecord,
    last_used_ms: AtomicU64,
}

impl LiveToken {
    pub fn new(record: TokenRecord) -> LiveToken {
        LiveToken { record, last_used_ms: AtomicU64::new(0) }
    }

    /// Note a use at `now_ms`. Writes the shared word at most once a second, so a token used by
    /// every core at once does not make its cache line bounce on every request.
    pub fn touch(&self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_used_ms.load(Ordering::Relaxed)) >= 1000 {
            self.last_used_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    pub fn last_used_ms(&self) -> Option<u64> {
        Some(self.last_used_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }
}

/// The unrevoked tokens by digest.
#[derive(Default)]
pub struct TokenSet {
    by_digest: HashMap<TokenDigest, Arc<LiveToken>>,
}

impl TokenSet {
    /// The set of the tokens not revoked.
    pub fn from_records(records: Vec<TokenRecord>) -> TokenSet {
        TokenSet {
            by_digest: records
                .into_iter()
                .filter(|r| r.revoked_ms.is_none())
                .map(|r| (r.digest, Arc::new(LiveToken::new(r))))
                .collect(),
        }
    }

    pub fn get(&self, digest: &TokenDigest) -> Option<&Arc<LiveToken>> {
        self.by_digest.get(digest)
    }

    /// Every token, oldest first.
    pub fn list(&self) -> Vec<Arc<LiveToken>> {
        let mut all: Vec<Arc<LiveToken>> = self.by_digest.values().cloned().collect();
        all.sort_by(|a, b| (a.record.created_ms, &a.record.id).cmp(&(b.record.created_ms, &b.record.id)));
        all
    }

    /// This set with `token` added (the other entries are shared, last-use times included).
    pub fn with(&self, token: Arc<LiveToken>) -> TokenSet {
        let mut by_digest = self.by_digest.clone();
        by_digest.insert(token.record.digest, token);
        TokenSet { by_digest }
    }

    /// The set of the unrevoked `records` (re-read from the registry), keeping this set's
    /// entry (and so its last-use time) for each token whose record is unchanged.
    pub fn refreshed(&self, records: Vec<TokenRecord>) -> TokenSet {
        let by_digest = records
            .into_iter()
            .filter(|r| r.revoked_ms.is_none())
            .map(|r| match self.by_digest.get(&r.digest).filter(|t| t.record == r) {
                Some(kept) => (r.digest, kept.clone()),
                None => (r.digest, Arc::new(LiveToken::new(r))),
            })
            .collect();
        TokenSet { by_digest }
    }

    /// This set without the token with `id`.
    pub fn without(&self, id: &str) -> TokenSet {
        let mut by_digest = self.by_digest.clone();
        by_digest.retain(|_, t| t.record.id != id);
        TokenSet { by_digest }
    }
}

/// What a new token is for (already parsed from the wire).
#[derive(Clone, Debug)]
pub struct TokenSpec {
    pub name: Option<String>,
    pub scope: Scope,
    pub functions: Vec<String>,
    pub expires_ms: Option<u64>,
}

/// A token just created: the only time its secret exists outside the caller's hands.
pub struct CreatedToken {
    pub token: Arc<LiveToken>,
    pub secret: String,
    /// Things worth saying that did not stop the creation (a function not deployed yet).
    pub warnings: Vec<String>,
}

/// Why a token was not created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error("there is no token {0} (or it is already revoked); `nimbus token ls` lists them")]
    NoSuchToken(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Check a spec and make the record and secret for it. `known` says whether a function is
/// deployed (in any stored version); `now_ms` is the creation time.
pub fn mint(
    spec: TokenSpec,
    now_ms: u64,
    known: &dyn Fn(&str) -> bool,
) -> Result<(TokenRecord, String, Vec<String>), TokenError> {
    let invalid = |m: String| Err(TokenError::Invalid(m));
    let scope = spec.scope;
    if !spec.functions.is_empty() && !matches!(scope, Scope::Invoke | Scope::Deploy) {
        return invalid(format!(
            "only invoke and deploy tokens can be limited to functions; a {scope} token acts on the whole app \
             (leave out the functions, or ask for scope invoke or deploy)"
        ));
    }
    if spec.functions.len() > MAX_FUNCTIONS {
        return invalid(format!("a token names at most {MAX_FUNCTIONS} functions"));
    }
    if let Some(bad) = spec.functions.iter().find(|f| f.trim().is_empty() || f.trim() != f.as_str()) {
        return invalid(format!("{bad:?} is not a function name"));
    }
    let name = spec.name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME || n.chars().any(char::is_control)) {
        return invalid(format!("a token's name is one line of at most {MAX_NAME} characters"));
    }
    if spec.expires_ms.is_some_and(|e| e <= now_ms) {
        return invalid("the expiry is in the past; give a duration like \"30d\" or a later time".to_owned());
    }
    let mut functions = spec.functions;
    functions.sort();
    functions.dedup();
    let warnings = functions
        .iter()
        .filter(|f| !known(f))
        .map(|f| format!("no function named {f:?} is deployed (yet); the token will work for it once it is"))
        .collect();
    let (secret, digest) = mint_token();
    let record = TokenRecord {
        id: new_token_id(),
        name,
        scope,
        functions,
        digest,
        created_ms: now_ms,
        expires_ms: spec.expires_ms,
        revoked_ms: None,
    };
    Ok((record, secret, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scope: Scope, functions: &[&str]) -> TokenSpec {
        TokenSpec { name: None, scope, functions: functions.iter().map(|f| f.to_string()).collect(), expires_ms: None }
    }

    #[test]
    fn specs_are_checked_with_reasons() {
        let known = |f: &str| f == "a";
        let err = |s: TokenSpec| match mint(s, 100, &known) {
            Err(TokenError::Invalid(m)) => m,
            other => panic!("expected a refusal, got {:?}", other.map(|(r, _, _)| r)),
        };
        assert!(err(spec(Scope::Read, &["a"])).contains("only invoke and deploy tokens"));
        assert!(err(spec(Scope::Admin, &["a"])).contains("only invoke and deploy tokens"));
        assert!(mint(spec(Scope::Deploy, &["a"]), 100, &known).is_ok());
        assert!(err(spec(Scope::Invoke, &[" a"])).contains("not a function name"));
        assert!(err(TokenSpec { expires_ms: Some(100), ..spec(Scope::Admin, &[]) }).contains("in the past"));
        assert!(err(TokenSpec { name: Some("a\nb".into()), ..spec(Scope::Admin, &[]) }).contains("one line"));

        let (r, secret, warnings) = mint(
            TokenSpec { name: Some("  ci  ".into()), expires_ms: Some(200), ..spec(Scope::Invoke, &["b", "a", "b"]) },
            100,
            &known,
        )
        .unwrap();
        assert_eq!(
            (r.name.as_deref(), r.scope, r.functions.clone()),
            (Some("ci"), Scope::Invoke, vec!["a".into(), "b".into()])
        );
        assert_eq!((r.created_ms, r.expires_ms, r.revoked_ms), (100, Some(200), None));
        assert_eq!(r.digest, TokenDigest::of(&secret));
        assert_eq!(warnings.len(), 1, "b is not deployed: {warnings:?}");
        assert!(warnings[0].contains("\"b\""), "{warnings:?}");
        let (r, _, _) = mint(TokenSpec { name: Some("  ".into()), ..spec(Scope::Read, &[]) }, 1, &known).unwrap();
        assert_eq!(r.name, None, "a blank name is no name");
    }

    #[test]
    fn the_set_holds_unrevoked_tokens_and_keeps_last_use_across_swaps() {
        let rec = |id: &str, created_ms, revoked_ms| TokenRecord {
            id: id.into(),
            name: None,
            scope: Scope::Read,
            functions: vec![],
            digest: TokenDigest::of(id),
            created_ms,
            expires_ms: None,
            revoked_ms,
        };
        let set = TokenSet::from_records(vec![rec("b", 2, None), rec("a", 1, None), rec("gone", 0, Some(5))]);
        assert_eq!(set.list().iter().map(|t| t.record.id.as_str()).collect::<Vec<_>>(), ["a", "b"], "oldest first");
        assert!(set.get(&TokenDigest::of("gone")).is_none());
        let a = set.get(&TokenDigest::of("a")).unwrap();
        a.touch(5_000);
        a.touch(5_500);
        assert_eq!(a.last_used_ms(), Some(5_000), "at most one write a second");
        let bigger = set.with(Arc::new(LiveToken::new(rec("c", 3, None))));
        assert_eq!(bigger.get(&TokenDigest::of("a")).unwrap().last_used_ms(), Some(5_000));
        let smaller = bigger.without("a");
        assert!(smaller.get(&TokenDigest::of("a")).is_none());
        assert_eq!(smaller.list().iter().map(|t| t.record.id.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    }
}
