//! The edge policies a manifest declares: `[auth.NAME]` (JWT or API key), `[cors.NAME]`,
//! `[[redirects]]`, `[[rewrites]]` and `[[headers]]`. Routes name the auth and CORS policies
//! (`auth = "NAME"`, `cors = "NAME"` or an inline `cors = { … }`); the rules apply to every
//! request by path, in the spirit of `vercel.json`.
//!
//! Nothing secret is ever written here: an HMAC secret is named by the environment variable
//! that holds it on the server (`secret_env`), API keys by their SHA-256 digests or by an
//! environment variable (`keys_env`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::ctx::{valid_name, Ctx, Value};

/// Keys of `[auth.NAME]`.
pub(crate) const AUTH_KEYS: &[&str] = &[
    "type",
    "jwks_url",
    "jwks_file",
    "secret_env",
    "issuer",
    "audience",
    "leeway",
    "required_claims",
    "algorithms",
    "forward_claims",
    "header",
    "keys_sha256",
    "keys_env",
];
/// Keys of `[cors.NAME]` and of an inline `cors = { … }`.
pub(crate) const CORS_KEYS: &[&str] = &["origins", "methods", "headers", "expose", "credentials", "max_age"];
/// Keys only a JWT policy takes.
const JWT_KEYS: &[&str] = &[
    "jwks_url",
    "jwks_file",
    "secret_env",
    "issuer",
    "audience",
    "leeway",
    "required_claims",
    "algorithms",
    "forward_claims",
];
/// Keys only an API key policy takes.
const API_KEY_KEYS: &[&str] = &["header", "keys_sha256", "keys_env"];
/// Keys of `[[redirects]]`.
pub(crate) const REDIRECT_KEYS: &[&str] = &["source", "destination", "permanent", "status"];
/// Keys of `[[rewrites]]`.
const REWRITE_KEYS: &[&str] = &["source", "destination"];
/// Keys of `[[headers]]`.
pub(crate) const HEADER_RULE_KEYS: &[&str] = &["source", "headers"];
/// The JWT algorithms nimbus verifies. `none` is never one of them.
pub const ALGORITHMS: &[&str] = &["HS256", "RS256", "ES256", "EdDSA"];

/// Everything the edge layer does for this app, beyond the routes themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeSpec {
    /// `[auth.NAME]`, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub auth: BTreeMap<String, AuthPolicy>,
    /// `[cors.NAME]` by name; a route's inline policy is named after the route (`routes[2]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cors: BTreeMap<String, CorsPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirects: Vec<Redirect>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrites: Vec<Rewrite>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderRule>,
}

impl EdgeSpec {
    pub fn is_empty(&self) -> bool {
        self == &EdgeSpec::default()
    }
}

/// `[auth.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AuthPolicy {
    Jwt(JwtPolicy),
    ApiKey(ApiKeyPolicy),
}

/// `type = "jwt"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtPolicy {
    pub keys: JwtKeys,
    pub issuer: Option<String>,
    /// Any one of these must be in the token's `aud`; empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// Claims that must be present (beyond `exp`, which always must).
    pub required_claims: Vec<String>,
    /// Accepted `alg` values, a subset of [`ALGORITHMS`].
    pub algorithms: Vec<String>,
    /// Claim name → request header the gateway sets from it.
    pub forward_claims: BTreeMap<String, String>,
}

/// Where a JWT policy's keys come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JwtKeys {
    /// Fetched by the gateway, cached, refetched on an unknown `kid` and on expiry.
    JwksUrl(String),
    /// `jwks_file` as written (relative to the app directory); [`crate::load`] replaces it by
    /// its content ([`JwtKeys::Jwks`]), so a deployment carries its keys.
    JwksFile(String),
    /// The JSON of a JWK set.
    Jwks(String),
    /// HS256: the name of the server's environment variable that holds the secret.
    SecretEnv(String),
}

/// `type = "api-key"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyPolicy {
    /// The request header that carries the key (lower case; `x-api-key` by default).
    pub header: String,
    /// Lower-case hex SHA-256 digests of the accepted keys.
    pub keys_sha256: Vec<String>,
    /// The server's environment variable holding accepted keys, comma-separated.
    pub keys_env: Option<String>,
}

/// `[cors.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorsPolicy {
    /// Allowed origins (`https://app.example.com`), or `*`.
    pub origins: Vec<String>,
    pub methods: Vec<String>,
    /// Allowed request headers (lower case); `*` allows whatever the preflight asks for.
    pub headers: Vec<String>,
    pub expose: Vec<String>,
    pub credentials: bool,
    pub max_age_s: Option<u64>,
}

/// `[[redirects]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    pub source: String,
    pub destination: String,
    /// 301, 302, 307 or 308.
    pub status: u16,
}

/// `[[rewrites]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    pub source: String,
    pub destination: String,
}

/// `[[headers]]`: headers added to the responses of the paths `source` matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderRule {
    pub source: String,
    /// (name in lower case, value), in the order written.
    pub headers: Vec<(String, String)>,
}

/// Read every edge table of the manifest. Inline `cors` tables of routes are read here too.
pub(crate) fn check(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> EdgeSpec {
    let mut edge = EdgeSpec::default();
    for (name, v) in named(cx, root, "auth") {
        if let Some(p) = auth(cx, v, &format!("auth.{name}")) {
            edge.auth.insert(name, p);
        }
    }
    for (name, v) in named(cx, root, "cors") {
        if let Some(p) = cors(cx, v, &format!("cors.{name}")) {
            edge.cors.insert(name, p);
        }
    }
    if let Some(DeValue::Array(routes)) = root.get("routes").map(|v| v.get_ref()) {
        for (i, r) in routes.iter().enumerate() {
            let inline = r.get_ref().as_table().and_then(|t| t.get("cors")).filter(|c| c.get_ref().is_table());
            if let Some(cv) = inline {
                let field = format!("routes[{i}].cors");
                if let Some(p) = cors(cx, cv, &field) {
                    edge.cors.insert(format!("routes[{i}]"), p);
                }
            }
        }
    }
    edge.redirects = rules(cx, root, "redirects").into_iter().filter_map(|(v, f)| redirect(cx, v, &f)).collect();
    edge.rewrites = rules(cx, root, "rewrites").into_iter().filter_map(|(v, f)| rewrite(cx, v, &f)).collect();
    edge.headers = rules(cx, root, "headers").into_iter().filter_map(|(v, f)| header_rule(cx, v, &f)).collect();
    edge
}

/// A route's `auth` and `cors`: the names of declared policies (an inline `cors` table is
/// named after the route, `routes[i]`).
pub(crate) fn route_refs(
    cx: &mut Ctx<'_>,
    root: &DeTable<'_>,
    t: &DeTable<'_>,
    field: &str,
) -> (Option<String>, Option<String>) {
    let declared = |kind: &str, name: &str| {
        root.get(kind).and_then(|v| v.get_ref().as_table()).is_some_and(|t| t.get(name).is_some())
    };
    let reference = |cx: &mut Ctx<'_>, kind: &str| -> Option<String> {
        let v = t.get(kind)?;
        let f = format!("{field}.{kind}");
        if kind == "cors" && v.get_ref().is_table() {
            return Some(field.to_owned());
        }
        let name = cx.string(v, &f)?;
        if declared(kind, &name) {
            return Some(name);
        }
        cx.err(v.span(), &f, format!("no {kind} policy named \"{name}\"; declare it with [{kind}.{name}]"));
        None
    };
    let auth = reference(cx, "auth");
    let cors = reference(cx, "cors");
    (auth, cors)
}

/// Replace each `jwks_file` by the JWK set it holds, so that the deployment carries its keys
/// (public keys; an HMAC secret belongs in `secret_env`). One problem per unreadable file.
pub(crate) fn read_jwks_files(
    edge: &mut EdgeSpec,
    app_dir: &std::path::Path,
    (file, source): (&str, &str),
    offsets: &std::collections::HashMap<String, usize>,
) -> Vec<crate::Diagnostic> {
    let mut problems = Vec::new();
    for (name, policy) in edge.auth.iter_mut() {
        let AuthPolicy::Jwt(j) = policy else { continue };
        let JwtKeys::JwksFile(path) = &j.keys else { continue };
        let text = std::fs::read_to_string(app_dir.join(path)).map_err(|e| e.to_string()).and_then(|t| {
            let v: serde_json::Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
            match v.get("keys") {
                Some(serde_json::Value::Array(_)) => Ok(t),
                _ => Err("it has no \"keys\" array".to_owned()),
            }
        });
        match text {
            Ok(t) => j.keys = JwtKeys::Jwks(t),
            Err(e) => problems.push(crate::Diagnostic::at(
                file,
                source,
                offsets.get(name).copied().unwrap_or(0),
                &format!("auth.{name}.jwks_file"),
                format!("cannot read the JWK set {path} ({e}); put a JSON Web Key Set there"),
            )),
        }
    }
    problems
}

/// Where each `[auth.NAME]` wrote its `jwks_file`, for the problems found when reading it.
pub(crate) fn jwks_file_offsets(root: &DeTable<'_>) -> std::collections::HashMap<String, usize> {
    let Some(DeValue::Table(t)) = root.get("auth").map(|v| v.get_ref()) else { return Default::default() };
    t.iter()
        .filter_map(|(k, v)| {
            let at = v.get_ref().as_table()?.get("jwks_file")?.span().start;
            Some((k.get_ref().to_string(), at))
        })
        .collect()
}

/// The entries of `[kind.NAME]` tables with valid names.
fn named<'a, 'i>(cx: &mut Ctx<'_>, root: &'a DeTable<'i>, kind: &str) -> Vec<(String, &'a Value<'i>)> {
    let Some(v) = root.get(kind) else { return Vec::new() };
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), kind, format!("expected a table (`[{kind}.NAME]`), found {}", v.get_ref().type_str()));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, pv) in t.iter() {
        let name: &str = key.get_ref().as_ref();
        if valid_name(name) {
            out.push((name.to_owned(), pv));
        } else {
            let msg = format!("\"{name}\" is not a valid policy name; use 1-64 letters, digits, '-' or '_'");
            cx.err(key.span(), &format!("{kind}.{name}"), msg);
        }
    }
    out
}

/// The entries of `[[kind]]`, each with its field path.
fn rules<'a, 'i>(cx: &mut Ctx<'_>, root: &'a DeTable<'i>, kind: &str) -> Vec<(&'a Value<'i>, String)> {
    let Some(v) = root.get(kind) else { return Vec::new() };
    match v.get_ref() {
        DeValue::Array(list) => list.iter().enumerate().map(|(i, rv)| (rv, format!("{kind}[{i}]"))).collect(),
        other => {
            cx.err(v.span(), kind, format!("expected an array of tables (`[[{kind}]]`), found {}", other.type_str()));
            Vec::new()
        }
    }
}

fn table<'a, 'i>(
    cx: &mut Ctx<'_>,
    v: &'a Value<'i>,
    field: &str,
    keys: &[&str],
    what: &str,
) -> Option<&'a DeTable<'i>> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table, found {}", v.get_ref().type_str()));
        return None;
    };
    cx.unknown_keys(t, keys, field, what);
    Some(t)
}

fn auth(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str) -> Option<AuthPolicy> {
    let t = table(cx, v, field, AUTH_KEYS, "an auth policy")?;
    let before = cx.error_count();
    let kind = match t.get("type") {
        Some(tv) => cx.string(tv, &format!("{field}.type")).filter(|k| {
            let ok = k == "jwt" || k == "api-key";
            if !ok {
                cx.err(
                    tv.span(),
                    &format!("{field}.type"),
                    format!("\"{k}\" is not an auth type; use \"jwt\" or \"api-key\""),
                );
            }
            ok
        }),
        None => {
            cx.err(v.span(), &format!("{field}.type"), "missing; add `type = \"jwt\"` or `type = \"api-key\"`");
            None
        }
    }?;
    let (other, what) = if kind == "jwt" { (API_KEY_KEYS, "a jwt") } else { (JWT_KEYS, "an api-key") };
    cx.misplaced(t, field, other, |k| format!("`{k}` does not apply to {what} policy; remove it"));
    let policy = if kind == "jwt" {
        jwt(cx, t, v, field).map(AuthPolicy::Jwt)
    } else {
        api_key(cx, t, v, field).map(AuthPolicy::ApiKey)
    };
    policy.filter(|_| cx.error_count() == before)
}

fn jwt(cx: &mut Ctx<'_>, t: &DeTable<'_>, v: &Value<'_>, field: &str) -> Option<JwtPolicy> {
    let f = |k: &str| format!("{field}.{k}");
    let sources: Vec<JwtKeys> = [("jwks_url", 0), ("jwks_file", 1), ("secret_env", 2)]
        .into_iter()
        .filter_map(|(k, i)| {
            let s = cx.string(t.get(k)?, &f(k))?;
            Some(match i {
                0 => JwtKeys::JwksUrl(s),
                1 => JwtKeys::JwksFile(s),
                _ => JwtKeys::SecretEnv(s),
            })
        })
        .collect();
    let keys = match sources.as_slice() {
        [one] => key_source(cx, t, one.clone(), field),
        [] => {
            cx.err(v.span(), field, "no keys; add `jwks_url`, `jwks_file` or `secret_env`");
            None
        }
        _ => {
            cx.err(v.span(), field, "more than one key source; keep one of `jwks_url`, `jwks_file`, `secret_env`");
            None
        }
    };
    let algorithms = match t.get("algorithms") {
        Some(av) => strings(cx, av, &f("algorithms"), &|a: &str| {
            (!ALGORITHMS.contains(&a))
                .then(|| format!("\"{a}\" is not a supported algorithm; use {}", ALGORITHMS.join(", ")))
        }),
        None if matches!(keys, Some(JwtKeys::SecretEnv(_))) => Some(vec!["HS256".to_owned()]),
        None => Some(vec!["RS256".to_owned(), "ES256".to_owned(), "EdDSA".to_owned()]),
    };
    let leeway =
        t.get("leeway").and_then(|lv| cx.duration(lv, &f("leeway"), Duration::ZERO, Duration::from_secs(3600)));
    let forward = t.get("forward_claims").and_then(|fv| forward_claims(cx, fv, &f("forward_claims")));
    Some(JwtPolicy {
        keys: keys?,
        issuer: t.get("issuer").and_then(|iv| cx.string(iv, &f("issuer"))),
        audience: t.get("audience").map_or(Some(Vec::new()), |av| string_or_list(cx, av, &f("audience")))?,
        leeway_s: leeway.map_or(0, |d| d.as_secs()),
        required_claims: t
            .get("required_claims")
            .map_or(Some(Vec::new()), |rv| strings(cx, rv, &f("required_claims"), &|_| None))?,
        algorithms: algorithms.filter(|a| !a.is_empty())?,
        forward_claims: forward.unwrap_or_default(),
    })
}

fn key_source(cx: &mut Ctx<'_>, t: &DeTable<'_>, keys: JwtKeys, field: &str) -> Option<JwtKeys> {
    let problem = match &keys {
        JwtKeys::JwksUrl(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
            Some(("jwks_url", format!("\"{u}\" is not an http(s) URL")))
        }
        JwtKeys::SecretEnv(e) if e.is_empty() || !e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Some(("secret_env", format!("\"{e}\" is not an environment variable name")))
        }
        JwtKeys::JwksFile(p) if p.is_empty() || p.starts_with('/') || p.split('/').any(|s| s == "..") => {
            Some(("jwks_file", format!("\"{p}\" must be a path inside the app directory")))
        }
        _ => None,
    };
    if let Some((k, msg)) = problem {
        let span = t.get(k).map_or(0..0, |v| v.span());
        cx.err(span, &format!("{field}.{k}"), msg);
        return None;
    }
    Some(keys)
}

fn forward_claims(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str) -> Option<BTreeMap<String, String>> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(
            v.span(),
            field,
            format!("expected a table like {{ sub = \"x-user-id\" }}, found {}", v.get_ref().type_str()),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    for (claim, hv) in t.iter() {
        let claim: &str = claim.get_ref().as_ref();
        let f = format!("{field}.{claim}");
        let Some(h) = cx.string(hv, &f) else { continue };
        let h = h.to_ascii_lowercase();
        if http_token(&h) {
            out.insert(claim.to_owned(), h);
        } else {
            cx.err(hv.span(), &f, format!("\"{h}\" is not a header name; use letters, digits and '-'"));
        }
    }
    Some(out)
}

fn api_key(cx: &mut Ctx<'_>, t: &DeTable<'_>, v: &Value<'_>, field: &str) -> Option<ApiKeyPolicy> {
    let f = |k: &str| format!("{field}.{k}");
    let header = match t.get("header") {
        Some(hv) => cx.string(hv, &f("header")).map(|h| h.to_ascii_lowercase()).filter(|h| {
            let ok = http_token(h);
            if !ok {
                cx.err(hv.span(), &f("header"), format!("\"{h}\" is not a header name"));
            }
            ok
        })?,
        None => "x-api-key".to_owned(),
    };
    let digests = t.get("keys_sha256").map_or(Some(Vec::new()), |dv| {
        strings(cx, dv, &f("keys_sha256"), &|d: &str| {
            (d.len() != 64 || !d.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| format!("\"{d}\" is not a SHA-256 digest; write 64 hex digits (`printf %s KEY | sha256sum`)"))
        })
    })?;
    let keys_env = t.get("keys_env").and_then(|ev| cx.string(ev, &f("keys_env")));
    if digests.is_empty() && keys_env.is_none() {
        cx.err(v.span(), field, "no keys; add `keys_sha256 = [\"<hex digest>\"]` or `keys_env = \"VARIABLE\"`");
        return None;
    }
    let keys_sha256 = digests.into_iter().map(|d| d.to_ascii_lowercase()).collect();
    Some(ApiKeyPolicy { header, keys_sha256, keys_env })
}

fn cors(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str) -> Option<CorsPolicy> {
    let t = table(cx, v, field, CORS_KEYS, "a CORS policy")?;
    let before = cx.error_count();
    let f = |k: &str| format!("{field}.{k}");
    let list = |cx: &mut Ctx<'_>, k: &str, check: &dyn Fn(&str) -> Option<String>| match t.get(k) {
        Some(lv) => strings(cx, lv, &f(k), check),
        None => Some(Vec::new()),
    };
    let origins = list(cx, "origins", &|o| {
        (o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/'))
            .then(|| format!("\"{o}\" is not an origin; write it like \"https://app.example.com\" (no path), or \"*\""))
    });
    let methods = list(cx, "methods", &|m| {
        (!crate::ctx::METHODS.contains(&m.to_ascii_uppercase().as_str()))
            .then(|| format!("\"{m}\" is not an HTTP method"))
    });
    let headers =
        list(cx, "headers", &|h| (!(h == "*" || http_token(h))).then(|| format!("\"{h}\" is not a header name")));
    let expose = list(cx, "expose", &|h| (!http_token(h)).then(|| format!("\"{h}\" is not a header name")));
    let credentials = t.get("credentials").and_then(|b| cx.boolean(b, &f("credentials"))).unwrap_or(false);
    let max_age = t.get("max_age").map(|m| cx.duration(m, &f("max_age"), Duration::ZERO, Duration::from_secs(86_400)));
    if origins.as_ref().is_some_and(|o| o.is_empty()) {
        cx.err(v.span(), &f("origins"), "missing; add `origins = [\"https://app.example.com\"]` or `[\"*\"]`");
    }
    if credentials && origins.as_ref().is_some_and(|o| o.iter().any(|o| o == "*")) {
        let span = t.get("credentials").map_or(0..0, |c| c.span());
        cx.err(span, &f("credentials"), "browsers refuse credentials with the origin \"*\"; list the origins instead");
    }
    let methods = methods.map(|m| {
        if m.is_empty() {
            ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].map(str::to_owned).to_vec()
        } else {
            m.iter().map(|x| x.to_ascii_uppercase()).collect()
        }
    });
    if cx.error_count() > before {
        return None;
    }
    let lower = |l: Vec<String>| l.into_iter().map(|h| h.to_ascii_lowercase()).collect();
    Some(CorsPolicy {
        origins: origins?,
        methods: methods?,
        headers: lower(headers?),
        expose: lower(expose?),
        credentials,
        max_age_s: max_age.flatten().map(|d| d.as_secs()),
    })
}

fn redirect(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str) -> Option<Redirect> {
    let t = table(cx, v, field, REDIRECT_KEYS, "a redirect")?;
    let before = cx.error_count();
    let (source, destination) = source_destination(cx, t, v, field, true);
    let f = |k: &str| format!("{field}.{k}");
    let permanent = t.get("permanent").and_then(|p| cx.boolean(p, &f("permanent")));
    let status = match (t.get("status"), permanent) {
        (Some(sv), None) => cx.u32(sv, &f("status"), 301, 308).and_then(|s| {
            let ok = matches!(s, 301 | 302 | 307 | 308);
            if !ok {
                cx.err(sv.span(), &f("status"), format!("{s} is not a redirect status; use 301, 302, 307 or 308"));
            }
            u16::try_from(s).ok().filter(|_| ok)
        }),
        (Some(sv), Some(_)) => {
            cx.err(sv.span(), &f("status"), "give `status` or `permanent`, not both");
            None
        }
        (None, Some(true)) => Some(308),
        (None, _) => Some(307),
    };
    if cx.error_count() > before {
        return None;
    }
    Some(Redirect { source: source?, destination: destination?, status: status? })
}

fn rewrite(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str) -> Option<Rewrite> {
    let t = table(cx, v, field, REWRITE_KEYS, "a rewrite")?;
    let (source, destination) = source_destination(cx, t, v, field, false);
    Some(Rewrite { source: source?, destination: destination? })
}

fn header_rule(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str) -> Option<HeaderRule> {
    let t = table(cx, v, field, HEADER_RULE_KEYS, "a headers rule")?;
    let source = pattern(cx, t, v, field, "source");
    let f = format!("{field}.headers");
    let headers = match t.get("headers").map(|h| (h, h.get_ref())) {
        Some((_, DeValue::Table(ht))) => {
            let mut out = Vec::new();
            for (name, hv) in ht.iter() {
                let name: &str = name.get_ref().as_ref();
                let hf = format!("{f}.{name}");
                let Some(value) = cx.string(hv, &hf) else { continue };
                if !http_token(name) || value.chars().any(|c| c.is_control()) {
                    cx.err(hv.span(), &hf, format!("\"{name}: {value}\" is not a valid header"));
                    continue;
                }
                out.push((name.to_ascii_lowercase(), value));
            }
            Some(out)
        }
        Some((hv, other)) => {
            cx.err(
                hv.span(),
                &f,
                format!("expected a table like {{ \"x-frame-options\" = \"DENY\" }}, found {}", other.type_str()),
            );
            None
        }
        None => {
            cx.err(v.span(), &f, "missing; add `headers = { \"x-frame-options\" = \"DENY\" }`");
            None
        }
    };
    Some(HeaderRule { source: source?, headers: headers? })
}

fn source_destination(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    v: &Value<'_>,
    field: &str,
    absolute_ok: bool,
) -> (Option<String>, Option<String>) {
    let source = pattern(cx, t, v, field, "source");
    let f = format!("{field}.destination");
    let destination = match t.get("destination") {
        Some(dv) => cx.string(dv, &f).filter(|d| {
            let url = absolute_ok && (d.starts_with("https://") || d.starts_with("http://"));
            let ok = (url || d.starts_with('/')) && !d.contains(char::is_whitespace);
            if !ok {
                let what =
                    if absolute_ok { "a path starting with '/' or an http(s) URL" } else { "a path starting with '/'" };
                cx.err(dv.span(), &f, format!("\"{d}\" must be {what}"));
            }
            ok
        }),
        None => {
            cx.err(v.span(), &f, "missing; add `destination = \"/new/path\"`");
            None
        }
    };
    (source, destination)
}

/// A rule's `source`: a path pattern as routes write them (`/blog/{slug}`, `/docs/*`).
fn pattern(cx: &mut Ctx<'_>, t: &DeTable<'_>, v: &Value<'_>, field: &str, key: &str) -> Option<String> {
    let f = format!("{field}.{key}");
    let Some(sv) = t.get(key) else {
        cx.err(v.span(), &f, format!("missing; add `{key} = \"/old/{{slug}}\"`"));
        return None;
    };
    cx.string(sv, &f).filter(|p| match crate::ctx::check_path(p) {
        Ok(()) => true,
        Err(msg) => {
            cx.err(sv.span(), &f, msg);
            false
        }
    })
}

pub(crate) fn strings(
    cx: &mut Ctx<'_>,
    v: &Value<'_>,
    field: &str,
    check: &dyn Fn(&str) -> Option<String>,
) -> Option<Vec<String>> {
    let DeValue::Array(list) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a list of strings, found {}", v.get_ref().type_str()));
        return None;
    };
    let before = cx.error_count();
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(s) = cx.string(item, &f) {
            match check(&s) {
                Some(problem) => cx.err(item.span(), &f, problem),
                None => out.push(s),
            }
        }
    }
    (cx.error_count() == before).then_some(out)
}

fn string_or_list(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str) -> Option<Vec<String>> {
    match v.get_ref() {
        DeValue::String(s) => Some(vec![s.to_string()]),
        _ => strings(cx, v, field, &|_| None),
    }
}

/// Whether `s` is a header name (an RFC 9110 token).
pub(crate) fn http_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(src: &str) -> Result<EdgeSpec, String> {
        let app = format!("name = \"a\"\n[functions.f]\nruntime = \"python\"\nhandler = \"h.handler\"\n{src}");
        crate::parse(&app, "nimbus.toml").map(|m| m.edge).map_err(|d| d.to_string())
    }

    #[test]
    fn a_jwt_policy_reads_with_its_defaults() {
        let e = edge("[auth.users]\ntype = \"jwt\"\njwks_url = \"http://127.0.0.1:9/jwks\"\naudience = \"api\"\nleeway = \"30s\"\nforward_claims = { sub = \"X-User-Id\" }\n").unwrap();
        let Some(AuthPolicy::Jwt(j)) = e.auth.get("users") else { panic!("{e:?}") };
        assert_eq!(j.keys, JwtKeys::JwksUrl("http://127.0.0.1:9/jwks".into()));
        assert_eq!(j.audience, vec!["api"]);
        assert_eq!(j.leeway_s, 30);
        assert_eq!(j.algorithms, vec!["RS256", "ES256", "EdDSA"]);
        assert_eq!(j.forward_claims.get("sub").map(String::as_str), Some("x-user-id"));
    }

    #[test]
    fn rules_and_cors_read() {
        let e = edge("[cors.web]\norigins = [\"https://a.example\"]\nmax_age = \"10m\"\n[[redirects]]\nsource = \"/old/{x}\"\ndestination = \"/new/{x}\"\npermanent = true\n[[rewrites]]\nsource = \"/r/*\"\ndestination = \"/real/*\"\n[[headers]]\nsource = \"/*\"\nheaders = { \"X-Frame-Options\" = \"DENY\" }\n").unwrap();
        assert_eq!(e.cors.get("web").map(|c| c.max_age_s), Some(Some(600)));
        assert_eq!(e.redirects.first().map(|r| r.status), Some(308));
        assert_eq!(e.rewrites.first().map(|r| r.destination.as_str()), Some("/real/*"));
        assert_eq!(e.headers.first().map(|h| h.headers.clone()), Some(vec![("x-frame-options".into(), "DENY".into())]));
    }

    #[test]
    fn bad_policies_are_refused_all_at_once() {
        let err = edge("[auth.a]\ntype = \"jwt\"\n[auth.b]\ntype = \"api-key\"\nkeys_sha256 = [\"abc\"]\n[cors.c]\norigins = [\"*\"]\ncredentials = true\n").unwrap_err();
        assert!(err.contains("auth.a: no keys"), "{err}");
        assert!(err.contains("keys_sha256[0]"), "{err}");
        assert!(err.contains("cors.c.credentials"), "{err}");
    }
}
