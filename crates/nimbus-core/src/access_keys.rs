//! Managed AWS access keys (`nimbus keys create|ls|revoke`): key pairs for the AWS port, each
//! limited to its grants (buckets, KV namespaces, functions for the Invoke API), kept in the
//! registry with the API tokens. Unlike a token's, a key's secret is stored in clear: SigV4
//! signs with it, so the server needs it to check a signature (as AWS itself does).
//!
//! The AWS port finds managed keys through [`AccessKeySource`] (the control plane's in-memory
//! set), so it never reads the registry on the request path. Minting draws from the
//! thread-local CSPRNG; nothing here reads or writes anything.

use std::fmt;
use std::sync::Arc;

use crate::function::Grants;

/// Every managed key's id starts with this (the admin pair of `aws-credentials` and the
/// per-instance keys use other prefixes).
pub const ACCESS_KEY_PREFIX: &str = "NIMK";

/// A managed key as the registry keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKeyRecord {
    /// `NIMK` and 16 more characters: the access key id clients send.
    pub id: String,
    /// The 40-character secret access key. Never listed, logged or shown after creation.
    pub secret: String,
    /// Whose or what for ("ci", "backup job"); the audit log names the key by it.
    pub name: String,
    /// What the key may touch; nothing else (bucket creation and deletion never).
    pub grants: Grants,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

impl AccessKeyRecord {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }

    /// Whether the AWS port accepts the key at `now_ms`: not revoked, not expired.
    pub fn usable(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && !self.expired(now_ms)
    }

    /// "active", "expired" or "revoked", as `nimbus keys ls` shows it.
    pub fn state(&self, now_ms: u64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if self.expired(now_ms) {
            "expired"
        } else {
            "active"
        }
    }
}

// By hand: the secret never reaches a log line through `{:?}`.
impl fmt::Debug for AccessKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKeyRecord")
            .field("id", &self.id)
            .field("secret", &"…")
            .field("name", &self.name)
            .field("grants", &self.grants)
            .field("created_ms", &self.created_ms)
            .field("expires_ms", &self.expires_ms)
            .field("revoked_ms", &self.revoked_ms)
            .finish()
    }
}

/// Where the AWS port looks up a key it does not hold itself. Called on the request path: an
/// implementation answers from memory (the control plane's set, swapped after every create and
/// revoke). It returns revoked and expired keys too, or `None`; the caller checks
/// [`AccessKeyRecord::usable`] against its clock, so expiry needs no sweep.
pub trait AccessKeySource: Send + Sync + 'static {
    fn access_key(&self, id: &str) -> Option<Arc<AccessKeyRecord>>;
}

/// A fresh key pair in AWS's shapes: a 20-character id (`NIMK` and 16 characters of
/// `A–Z2–7`) and a 40-character secret (base64 alphabet), both from the thread-local CSPRNG.
pub fn mint_access_key() -> (String, String) {
    const ID: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // Both alphabets have a power-of-two size, so a byte modulo the size is uniform.
    let pick = |set: &[u8], n: usize| -> String {
        let bytes: [u8; 40] = rand::random();
        bytes.iter().take(n).map(|b| set.get(usize::from(*b) % set.len()).map_or('A', |c| char::from(*c))).collect()
    };
    let id = format!("{ACCESS_KEY_PREFIX}{}", pick(ID, 20 - ACCESS_KEY_PREFIX.len()));
    (id, pick(SECRET, 40))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_have_aws_shapes_and_differ() {
        let (id, secret) = mint_access_key();
        assert_eq!(id.len(), 20);
        assert!(id.starts_with(ACCESS_KEY_PREFIX), "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)), "{id}");
        assert_eq!(secret.len(), 40);
        assert_ne!(mint_access_key(), (id, secret));
    }

    #[test]
    fn state_and_debug_hide_nothing_but_the_secret() {
        let mut k = AccessKeyRecord {
            id: "NIMKAAAA".into(),
            secret: "very-secret".into(),
            name: "ci".into(),
            grants: Grants::default(),
            created_ms: 0,
            expires_ms: Some(10),
            revoked_ms: None,
        };
        assert_eq!((k.state(9), k.usable(9)), ("active", true));
        assert_eq!((k.state(10), k.usable(10)), ("expired", false));
        k.revoked_ms = Some(5);
        assert_eq!((k.state(9), k.usable(9)), ("revoked", false));
        let shown = format!("{k:?}");
        assert!(shown.contains("NIMKAAAA") && !shown.contains("very-secret"), "{shown}");
    }
}
