//! Credentials of the management plane: scopes, API tokens as the registry keeps them (as a
//! digest, never in clear), and the token format. Minting draws from the thread-local CSPRNG;
//! nothing here reads or writes anything.

use std::fmt;

use sha2::{Digest, Sha256};

/// What a credential may do. `Admin` may do everything (token management, the audit log and
/// the dead-letter store's redrive and purge included); `Deploy` deploys and rolls back, and
/// reads what `Read` reads (and, when its token names functions, may change only those); `Read` reads the management API (not the tokens, not the audit log); `Invoke`
/// calls the Invoke API only, and only the functions its token names when it names any. The
/// gateway's endpoint table says which scope each endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Admin,
    Deploy,
    Read,
    Invoke,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Admin, Scope::Deploy, Scope::Invoke, Scope::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Read => "read",
            Scope::Invoke => "invoke",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether a credential of this scope may call an endpoint that needs `needed`.
    pub fn grants(self, needed: Scope) -> bool {
        matches!((self, needed), (Scope::Admin, _) | (Scope::Deploy, Scope::Read)) || self == needed
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every token's secret starts with this, so that secret scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "nbt_";
/// Token ids (which are not secret) start with this.
pub const TOKEN_ID_PREFIX: &str = "tok_";

/// SHA-256 of a credential's secret: what is stored and compared, never the secret itself.
///
/// SHA-256 and not a password hash (bcrypt, scrypt, argon2): a token is 32 random bytes, so
/// there is nothing to guess faster than brute force over 2^256 secrets, with or without the
/// digest. A slow hash protects low-entropy passwords from offline guessing; here it would only
/// add milliseconds to every authenticated request.
///
/// Equality runs in constant time, so a lookup keyed by digests (a `HashMap`) does not reveal
/// through its timing how much of a stored digest a guess matched.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of a presented secret (surrounding whitespace ignored, as when pasted).
    pub fn of(secret: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(secret.trim().as_bytes()).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> TokenDigest {
        TokenDigest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for TokenDigest {
    fn eq(&self, other: &Self) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl Eq for TokenDigest {}

// By hand beside the constant-time `PartialEq`: equal digests have equal bytes, so hashing the
// bytes agrees with it.
impl std::hash::Hash for TokenDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: String = self.0.iter().take(4).map(|b| format!("{b:02x}")).collect();
        write!(f, "TokenDigest({head}…)")
    }
}

/// A new secret (`nbt_` and 64 hex digits: 32 bytes from the thread-local CSPRNG) and its digest.
pub fn mint_token() -> (String, TokenDigest) {
    let bytes: [u8; 32] = rand::random();
    let secret = format!("{TOKEN_PREFIX}{}", hex(&bytes));
    let digest = TokenDigest::of(&secret);
    (secret, digest)
}

/// A new token id (`tok_` and 16 hex digits). Ids name tokens in listings, revocations and the
/// audit log; they grant nothing.
pub fn new_token_id() -> String {
    format!("{TOKEN_ID_PREFIX}{}", hex(&rand::random::<[u8; 8]>()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token as the registry keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    /// A note saying whose or what for ("ci", "alice's laptop").
    pub name: Option<String>,
    pub scope: Scope,
    /// For `Invoke` tokens: the functions it may invoke; for `Deploy` tokens: the functions a
    /// deploy or rollback may change (nothing else may change). Empty: no limit.
    pub functions: Vec<String>,
    pub digest: TokenDigest,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

impl TokenRecord {
    /// How the audit log and error messages name the token: its name, else its id.
    pub fn label(&self) -> &str {
        self.name.as_deref().filter(|n| !n.is_empty()).unwrap_or(&self.id)
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }

    /// Whether the token's function list lets it invoke `function` (its scope is checked apart).
    pub fn may_invoke(&self, function: &str) -> bool {
        self.functions.is_empty() || self.functions.iter().any(|f| f == function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_grant_what_they_contain() {
        use Scope::*;
        // (holder, needed) pairs that are granted; every other pair is refused.
        let granted = [
            (Admin, Admin),
            (Admin, Deploy),
            (Admin, Read),
            (Admin, Invoke),
            (Deploy, Deploy),
            (Deploy, Read),
            (Read, Read),
            (Invoke, Invoke),
        ];
        for holder in Scope::ALL {
            for needed in Scope::ALL {
                assert_eq!(holder.grants(needed), granted.contains(&(holder, needed)), "{holder} for {needed}");
            }
        }
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("Admin"), None, "scopes are lowercase");
        assert_eq!(Scope::parse("write"), None);
    }

    #[test]
    fn minted_tokens_are_prefixed_random_hex_and_hash_as_presented() {
        let is_token_shaped = |s: &str| {
            s.strip_prefix(TOKEN_PREFIX)
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        };
        let (a, da) = mint_token();
        let (b, db) = mint_token();
        assert!(is_token_shaped(&a) && is_token_shaped(&b), "{a} {b}");
        assert_ne!(a, b);
        assert_ne!(da, db);
        assert_eq!(TokenDigest::of(&format!(" {a}\n")), da, "pasted whitespace is ignored");
        assert!(!a.contains(&format!("{da:?}")), "the digest is not the secret");
        let id = new_token_id();
        assert!(id.starts_with(TOKEN_ID_PREFIX) && id.len() == 20, "{id}");
    }

    #[test]
    fn labels_expiry_and_function_lists() {
        let mut t = TokenRecord {
            id: "tok_1".into(),
            name: None,
            scope: Scope::Invoke,
            functions: vec![],
            digest: TokenDigest::of("x"),
            created_ms: 0,
            expires_ms: Some(10),
            revoked_ms: None,
        };
        assert_eq!(t.label(), "tok_1");
        assert!(t.may_invoke("any"));
        assert!(!t.expired(9) && t.expired(10));
        t.name = Some("ci".into());
        t.functions = vec!["a".into()];
        assert_eq!(t.label(), "ci");
        assert!(t.may_invoke("a") && !t.may_invoke("b"));
    }
}
