//! The wire side of tokens, managed access keys and the audit log: `POST /v1/tokens` and
//! `POST /v1/keys` bodies into specs, tokens, keys and audit entries into `nimbus-api` types,
//! and the `GET /v1/audit` query. Pure functions; the handlers are in `mgmt.rs`.

use nimbus_api as api;
use nimbus_control::access_keys::parse_access;
use nimbus_control::{AccessKeySpec, LiveToken, TokenSpec};
use nimbus_core::{AccessKeyRecord, AuditAction, AuditEntry, AuditQuery, Grants, Scope, TokenRecord};

/// A `POST /v1/tokens` body as a spec, with every problem said plainly. `expiresIn` counts from
/// `now_ms`.
pub(crate) fn token_spec(req: api::TokenRequest, now_ms: u64) -> Result<TokenSpec, String> {
    let all = Scope::ALL.map(Scope::as_str).join(", ");
    let scope = match req.scope.trim() {
        "" => return Err(format!("name the token's scope: one of {all}")),
        s => Scope::parse(s).ok_or_else(|| format!("scope {s:?} is not one of {all}"))?,
    };
    let expires_ms = expiry(req.expires_in, req.expires, now_ms)?;
    Ok(TokenSpec { name: req.name, scope, functions: req.functions, expires_ms })
}

/// `expiresIn` (from `now_ms`) or `expires`, not both; neither is no expiry.
fn expiry(expires_in_: Option<String>, expires: Option<String>, now_ms: u64) -> Result<Option<u64>, String> {
    match (expires_in_, expires) {
        (Some(_), Some(_)) => Err("give expiresIn or expires, not both".to_owned()),
        (Some(d), None) => Ok(Some(now_ms.saturating_add(expires_in(&d)?))),
        (None, Some(t)) => Ok(Some(time_ms(&t)?)),
        (None, None) => Ok(None),
    }
}

/// A `POST /v1/keys` body as a spec: access words and the expiry read here, names checked by
/// the control plane.
pub(crate) fn access_key_spec(req: api::AccessKeyRequest, now_ms: u64) -> Result<AccessKeySpec, String> {
    let expires_ms = expiry(req.expires_in, req.expires, now_ms)?;
    let grants = Grants {
        functions: req.functions,
        buckets: parse_access("bucket", req.buckets)?,
        kv: parse_access("KV namespace", req.kv)?,
        ..Grants::default()
    };
    Ok(AccessKeySpec { name: req.name, grants, expires_ms })
}

pub(crate) fn access_key_info(k: &AccessKeyRecord, now_ms: u64) -> api::AccessKeyInfo {
    let words = |m: &std::collections::BTreeMap<String, nimbus_core::Access>| {
        m.iter().map(|(n, a)| (n.clone(), a.as_str().to_owned())).collect()
    };
    api::AccessKeyInfo {
        id: k.id.clone(),
        name: k.name.clone(),
        buckets: words(&k.grants.buckets),
        kv: words(&k.grants.kv),
        functions: k.grants.functions.clone(),
        created_ms: k.created_ms,
        expires_ms: k.expires_ms,
        revoked_ms: k.revoked_ms,
        state: k.state(now_ms).to_owned(),
    }
}

/// A positive duration ("30d", "12h", "90s"), in milliseconds.
fn expires_in(d: &str) -> Result<u64, String> {
    let parsed = nimbus_manifest::parse_duration(d)
        .ok_or_else(|| format!("expiresIn {d:?} is not a duration; write it like \"30d\", \"12h\" or \"90m\""))?;
    match u64::try_from(parsed.as_millis()) {
        Ok(0) => Err("expiresIn must be longer than 0; leave it out for a token that does not expire".to_owned()),
        Ok(ms) => Ok(ms),
        Err(_) => Err(format!("expiresIn {d:?} is too long")),
    }
}

/// An RFC 3339 time, in milliseconds since the epoch.
fn time_ms(t: &str) -> Result<u64, String> {
    let parsed = chrono::DateTime::parse_from_rfc3339(t.trim())
        .map_err(|_| format!("expires {t:?} is not an RFC 3339 time like \"2027-01-31T00:00:00Z\""))?;
    u64::try_from(parsed.timestamp_millis()).map_err(|_| format!("expires {t:?} is before 1970"))
}

pub(crate) fn token_info(record: &TokenRecord, last_used_ms: Option<u64>, now_ms: u64) -> api::TokenInfo {
    api::TokenInfo {
        id: record.id.clone(),
        name: record.name.clone(),
        scope: record.scope.as_str().to_owned(),
        functions: record.functions.clone(),
        created_ms: record.created_ms,
        expires_ms: record.expires_ms,
        expired: record.expired(now_ms),
        revoked_ms: record.revoked_ms,
        last_used_ms,
    }
}

pub(crate) fn live_token_info(t: &LiveToken, now_ms: u64) -> api::TokenInfo {
    token_info(&t.record, t.last_used_ms(), now_ms)
}

pub(crate) fn audit_entry(e: AuditEntry) -> api::AuditEntry {
    api::AuditEntry {
        ts_ms: e.ts_ms,
        action: e.action.as_str().to_owned(),
        target: e.target,
        outcome: if e.error.is_none() { "ok" } else { "error" }.to_owned(),
        error: e.error,
        actor: e.actor,
        token_id: e.token_id,
        source: e.source,
        count: e.count,
    }
}

/// `GET /v1/audit?since=&limit=&action=`: `since` as `/v1/usage` takes it (default: all that is
/// kept), `limit` 1–10,000 (default 100), `action` one of the actions.
pub(crate) fn audit_query(q: &impl Fn(&str) -> Option<String>, now_ms: u64) -> Result<AuditQuery, String> {
    let since_ms = q("since").map(|s| crate::usage::parse_since(&s, now_ms)).transpose()?.unwrap_or(0);
    let action = q("action")
        .map(|a| {
            AuditAction::parse(&a).ok_or_else(|| {
                let all = AuditAction::ALL.map(AuditAction::as_str).join(", ");
                format!("action {a:?} is not one of {all}")
            })
        })
        .transpose()?;
    let limit = match q("limit") {
        None => 100,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| format!("limit {l:?} is not a number from 1 to 10000"))?,
    };
    Ok(AuditQuery { since_ms, action, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(scope: &str) -> api::TokenRequest {
        api::TokenRequest { scope: scope.into(), ..Default::default() }
    }

    /// Token requests as clients send them: what each becomes, or what is wrong with it.
    #[test]
    fn token_requests_parse_or_say_what_is_wrong() {
        let now = 1_000_000;
        let ok = |r: api::TokenRequest| token_spec(r, now).unwrap();
        let err = |r: api::TokenRequest| token_spec(r, now).unwrap_err();
        assert_eq!(ok(req("invoke")).scope, Scope::Invoke);
        assert_eq!(ok(req(" read ")).scope, Scope::Read);
        assert_eq!(ok(req("admin")).expires_ms, None);
        let in_30d = api::TokenRequest { expires_in: Some("30d".into()), ..req("deploy") };
        assert_eq!(ok(in_30d).expires_ms, Some(now + 30 * 24 * 3_600_000));
        let at = api::TokenRequest { expires: Some("2027-01-31T00:00:00Z".into()), ..req("deploy") };
        assert_eq!(ok(at).expires_ms, Some(1_801_353_600_000));
        let named = api::TokenRequest { name: Some("ci".into()), functions: vec!["f".into()], ..req("invoke") };
        let spec = ok(named);
        assert_eq!((spec.name.as_deref(), spec.functions.as_slice()), (Some("ci"), ["f".to_owned()].as_slice()));

        assert!(err(req("")).contains("one of admin, deploy, invoke, read"), "{}", err(req("")));
        assert!(err(req("write")).contains("\"write\" is not one of admin, deploy, invoke, read"));
        assert!(err(req("Admin")).contains("not one of"), "scopes are lowercase");
        let bad = |expires_in: &str| err(api::TokenRequest { expires_in: Some(expires_in.into()), ..req("read") });
        assert!(bad("soon").contains("not a duration"), "{}", bad("soon"));
        assert!(bad("0s").contains("longer than 0"), "{}", bad("0s"));
        let both = api::TokenRequest {
            expires_in: Some("1d".into()),
            expires: Some("2027-01-01T00:00:00Z".into()),
            ..req("read")
        };
        assert!(err(both).contains("not both"));
        let date_only = api::TokenRequest { expires: Some("2027-01-31".into()), ..req("read") };
        assert!(err(date_only).contains("RFC 3339"));
    }

    #[test]
    fn access_key_requests_parse_or_say_what_is_wrong() {
        use std::collections::BTreeMap;
        let now = 1_000;
        let req = |buckets: &[(&str, &str)]| api::AccessKeyRequest {
            name: "ci".into(),
            buckets: buckets.iter().map(|(b, a)| ((*b).to_owned(), (*a).to_owned())).collect(),
            ..Default::default()
        };
        let spec = access_key_spec(
            api::AccessKeyRequest {
                kv: BTreeMap::from([("cache".into(), "read-write".into())]),
                functions: vec!["f".into()],
                expires_in: Some("1h".into()),
                ..req(&[("photos", "read"), ("logs", "write")])
            },
            now,
        )
        .unwrap();
        assert_eq!(spec.grants.buckets.get("photos"), Some(&nimbus_core::Access::Read));
        assert_eq!(spec.grants.kv.get("cache"), Some(&nimbus_core::Access::ReadWrite));
        assert_eq!(
            (spec.grants.functions.as_slice(), spec.expires_ms),
            (["f".to_owned()].as_slice(), Some(now + 3_600_000))
        );
        let e = access_key_spec(req(&[("photos", "admin")]), now).unwrap_err();
        assert!(e.contains("bucket \"photos\" is \"admin\"") && e.contains("read-write"), "{e}");
        let both = api::AccessKeyRequest {
            expires_in: Some("1d".into()),
            expires: Some("2027-01-01T00:00:00Z".into()),
            ..req(&[("photos", "read")])
        };
        assert!(access_key_spec(both, now).unwrap_err().contains("not both"));
        let soon = api::AccessKeyRequest { expires_in: Some("soon".into()), ..req(&[("photos", "read")]) };
        assert!(access_key_spec(soon, now).unwrap_err().contains("not a duration"));
    }

    #[test]
    fn audit_queries() {
        let now = 100 * 3_600_000;
        let parse = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            audit_query(&|k: &str| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone()), now)
        };
        assert_eq!(parse(&[]).unwrap(), AuditQuery { since_ms: 0, action: None, limit: 100 });
        let q = parse(&[("since", "24h"), ("action", "token.create"), ("limit", "5")]).unwrap();
        assert_eq!(q, AuditQuery { since_ms: now - 24 * 3_600_000, action: Some(AuditAction::TokenCreate), limit: 5 });
        assert!(parse(&[("action", "deploys")]).unwrap_err().contains("deploy, rollback"));
        assert!(parse(&[("limit", "0")]).unwrap_err().contains("1 to 10000"));
        assert!(parse(&[("since", "yesterday")]).unwrap_err().contains("since"));
    }
}
