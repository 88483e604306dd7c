//! Dashboard sign-in sessions: 32 random bytes per session, kept in memory as their SHA-256 for
//! [`SESSION_TTL`] (or until logout or restart), carried by the `nimbus_session` cookie. The
//! gateway accepts a live session as an admin credential, wherever it accepts the admin token
//! (see `dashboard.rs` for why a cookie and not the token).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::HeaderMap;
use nimbus_core::ids::now_ms;
use sha2::{Digest, Sha256};

pub(crate) const COOKIE: &str = "nimbus_session";
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; logging in past this forgets the oldest.
const MAX_SESSIONS: usize = 1024;

/// Signed-in dashboard sessions: SHA-256 of the cookie value → expiry (ms since the epoch).
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<[u8; 32], u64>>,
}

impl Sessions {
    /// A new session; returns the cookie value.
    pub(crate) fn create(&self) -> String {
        let secret: [u8; 32] = rand::random();
        let id = hex::encode(secret);
        let now = now_ms();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, expires| *expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(Sha256::digest(id.as_bytes()).into(), now + SESSION_TTL.as_millis() as u64);
        id
    }

    /// Whether `id` (a cookie's value) is a live session.
    pub(crate) fn valid(&self, id: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key).is_some_and(|expires| *expires > now_ms())
    }

    pub(crate) fn remove(&self, id: &str) {
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }
}

/// The value of the session cookie, if the request has one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; nimbus_session=abc; b=2".parse().unwrap());
        assert_eq!(session_cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "nimbus_sessionx=1".parse().unwrap());
        assert_eq!(session_cookie(&h), None);
    }

    #[test]
    fn sessions_end_on_logout() {
        let s = Sessions::default();
        let id = s.create();
        assert!(s.valid(&id));
        assert!(!s.valid("nope"));
        s.remove(&id);
        assert!(!s.valid(&id));
    }
}
