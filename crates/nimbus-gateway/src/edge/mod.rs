//! The edge layer: what the gateway does for a route before and after the function runs,
//! declared per route in the manifest instead of written in user code.
//!
//! The order a request goes through (each step may answer by itself):
//!
//! 1. `traffic`: which deployment serves the request (a preview host, a weighted alias with
//!    its sticky cookie, or the live one).
//! 2. [`client`]: who is calling (the client address, believing `X-Forwarded-For` only from
//!    trusted proxies) and where from (geo).
//! 3. `rules`: redirects answer, rewrites change the path; then the route is matched, and a
//!    path no route matches falls to the static assets.
//! 4. `cors`: a preflight is answered here.
//! 5. `auth`: JWT or API key, 401 before any instance starts; the claims go on as [`Claims`].
//! 6. `limits`: the token bucket per key, shared through KV, 429 when empty.
//! 7. `cache`: a fresh stored response answers; misses for one key are coalesced into one call
//!    of the function.
//! 8. On the way out: the response headers rules, CORS headers, `x-nimbus-version`.

pub(crate) mod cache;
pub(crate) mod client;
pub(crate) mod freshness;
pub(crate) mod limits;

/// The verified claims of a JWT (or the key's name for an API key), as the auth step left
/// them for the steps after it (a rate limit keyed by a claim, the event's
/// `requestContext.authorizer.jwt`).
#[allow(dead_code)] // filled by the auth step, read by limits and the event
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Claims(pub serde_json::Map<String, serde_json::Value>);
