//! Who may call what, written once: every endpoint that takes a credential, with the scope it
//! needs. The management API routes through this table (an endpoint missing here does not
//! exist), the Invoke API reads its row, and `nimbus-api`'s endpoint table documents it (a test
//! below holds the two together).
//!
//! The rule the rows follow: `read` for every `GET` under `/v1` but the tokens, the access
//! keys and the audit log; `deploy` for what changes the code that runs (deploy, rollback, traffic splits) and for writing KV keys;
//! `admin` for credentials, the audit log (it shows who did what, from where) and what re-runs
//! or destroys events or data wholesale (dead-letter redrive and purge, a message queue's purge and redrive, deleting a
//! KV namespace or a bucket: operator decisions about data, not releases); `invoke` for the Invoke API.

use nimbus_core::Scope;

/// An endpoint that takes a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    App,
    Deployments,
    Deploy,
    Rollback,
    Functions,
    Logs,
    Invocations,
    Invocation,
    Dlq,
    DeadLetter,
    Redrive,
    Purge,
    Queue,
    Usage,
    Stats,
    Info,
    CreateToken,
    Tokens,
    RevokeToken,
    CreateKey,
    Keys,
    RevokeKey,
    Audit,
    KvNamespaces,
    KvKeys,
    KvDeleteNamespace,
    KvGet,
    KvPut,
    KvIncrement,
    KvDelete,
    Buckets,
    DeleteBucket,
    Queues,
    MessageQueue,
    QueueMessages,
    PurgeQueue,
    RedriveQueue,
    Invoke,
    Traffic,
    SetTraffic,
    CachePurge,
    Nodes,
}

/// (method, path with `{…}` for one segment, endpoint, scope needed).
pub(crate) const ENDPOINTS: &[(&str, &str, Endpoint, Scope)] = &[
    ("GET", "/v1/app", Endpoint::App, Scope::Read),
    ("GET", "/v1/deployments", Endpoint::Deployments, Scope::Read),
    ("POST", "/v1/deployments", Endpoint::Deploy, Scope::Deploy),
    ("POST", "/v1/rollback", Endpoint::Rollback, Scope::Deploy),
    ("GET", "/v1/functions", Endpoint::Functions, Scope::Read),
    ("GET", "/v1/functions/{name}/logs", Endpoint::Logs, Scope::Read),
    ("GET", "/v1/invocations", Endpoint::Invocations, Scope::Read),
    ("GET", "/v1/invocations/{id}", Endpoint::Invocation, Scope::Read),
    ("GET", "/v1/dlq", Endpoint::Dlq, Scope::Read),
    ("GET", "/v1/dlq/{id}", Endpoint::DeadLetter, Scope::Read),
    ("POST", "/v1/dlq/redrive", Endpoint::Redrive, Scope::Admin),
    ("POST", "/v1/dlq/purge", Endpoint::Purge, Scope::Admin),
    ("GET", "/v1/queue", Endpoint::Queue, Scope::Read),
    ("GET", "/v1/usage", Endpoint::Usage, Scope::Read),
    ("GET", "/v1/stats", Endpoint::Stats, Scope::Read),
    ("GET", "/v1/info", Endpoint::Info, Scope::Read),
    ("POST", "/v1/tokens", Endpoint::CreateToken, Scope::Admin),
    ("GET", "/v1/tokens", Endpoint::Tokens, Scope::Admin),
    ("DELETE", "/v1/tokens/{id}", Endpoint::RevokeToken, Scope::Admin),
    ("POST", "/v1/keys", Endpoint::CreateKey, Scope::Admin),
    ("GET", "/v1/keys", Endpoint::Keys, Scope::Admin),
    ("DELETE", "/v1/keys/{id}", Endpoint::RevokeKey, Scope::Admin),
    ("GET", "/v1/audit", Endpoint::Audit, Scope::Admin),
    ("GET", "/v1/kv", Endpoint::KvNamespaces, Scope::Read),
    ("GET", "/v1/kv/{name}", Endpoint::KvKeys, Scope::Read),
    ("DELETE", "/v1/kv/{name}", Endpoint::KvDeleteNamespace, Scope::Admin),
    ("GET", "/v1/kv/{name}/{key}", Endpoint::KvGet, Scope::Read),
    ("PUT", "/v1/kv/{name}/{key}", Endpoint::KvPut, Scope::Deploy),
    ("POST", "/v1/kv/{name}/{key}", Endpoint::KvIncrement, Scope::Deploy),
    ("DELETE", "/v1/kv/{name}/{key}", Endpoint::KvDelete, Scope::Deploy),
    ("GET", "/v1/buckets", Endpoint::Buckets, Scope::Read),
    ("DELETE", "/v1/buckets/{name}", Endpoint::DeleteBucket, Scope::Admin),
    ("GET", "/v1/queues", Endpoint::Queues, Scope::Read),
    ("GET", "/v1/queues/{name}", Endpoint::MessageQueue, Scope::Read),
    ("GET", "/v1/queues/{name}/messages", Endpoint::QueueMessages, Scope::Read),
    ("POST", "/v1/queues/{name}/purge", Endpoint::PurgeQueue, Scope::Admin),
    ("POST", "/v1/queues/{name}/redrive", Endpoint::RedriveQueue, Scope::Admin),
    ("POST", "/2015-03-31/functions/{name}/invocations", Endpoint::Invoke, Scope::Invoke),
    ("GET", "/v1/aliases/{name}/traffic", Endpoint::Traffic, Scope::Read),
    ("PUT", "/v1/aliases/{name}/traffic", Endpoint::SetTraffic, Scope::Deploy),
    ("POST", "/v1/cache/purge", Endpoint::CachePurge, Scope::Deploy),
    ("GET", "/v1/nodes", Endpoint::Nodes, Scope::Read),
];

/// A request matched to its row.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Matched {
    pub endpoint: Endpoint,
    pub scope: Scope,
    /// The first `{…}` segment, when the path has one.
    pub param: Option<String>,
    /// The second `{…}` segment (a KV key), when the path has two.
    pub key: Option<String>,
}

/// The row for `method` and a path already split into percent-decoded segments (the leading
/// empty segment included: `["", "v1", "app"]`).
pub(crate) fn find(method: &str, segments: &[&str]) -> Option<Matched> {
    ENDPOINTS.iter().filter(|(m, ..)| *m == method).find_map(|(_, pattern, endpoint, scope)| {
        let parts: Vec<&str> = pattern.split('/').collect();
        if parts.len() != segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (p, s) in parts.iter().zip(segments) {
            if p.starts_with('{') {
                params.push((*s).to_owned());
            } else if p != s {
                return None;
            }
        }
        let mut params = params.into_iter();
        Some(Matched { endpoint: *endpoint, scope: *scope, param: params.next(), key: params.next() })
    })
}

/// The scope `endpoint` needs (admin for a row that is missing: refuse rather than open; the
/// tests keep every endpoint in the table).
pub(crate) fn scope_of(endpoint: Endpoint) -> Scope {
    ENDPOINTS.iter().find(|(.., e, _)| *e == endpoint).map_or(Scope::Admin, |(.., s)| *s)
}

/// What a refusal for the wrong scope says: what was needed, and what the credential has.
pub(crate) fn needs(what: &str, needed: Scope, holder: &str, has: Scope) -> String {
    let or_admin = if needed == Scope::Admin { "" } else { " (or admin)" };
    format!("{what} needs a token with scope {needed}{or_admin}; {holder} has scope {has}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(path: &str) -> Vec<&str> {
        path.split('/').collect()
    }

    /// Requests as clients send them, and the scope each needs.
    #[test]
    fn every_request_finds_its_row() {
        let cases = [
            ("GET", "/v1/app", Some((Endpoint::App, Scope::Read, None))),
            ("POST", "/v1/deployments", Some((Endpoint::Deploy, Scope::Deploy, None))),
            ("GET", "/v1/functions/hello/logs", Some((Endpoint::Logs, Scope::Read, Some("hello")))),
            ("GET", "/v1/invocations/abc", Some((Endpoint::Invocation, Scope::Read, Some("abc")))),
            ("GET", "/v1/dlq/redrive", Some((Endpoint::DeadLetter, Scope::Read, Some("redrive")))),
            ("POST", "/v1/dlq/redrive", Some((Endpoint::Redrive, Scope::Admin, None))),
            ("POST", "/v1/dlq/purge", Some((Endpoint::Purge, Scope::Admin, None))),
            ("GET", "/v1/tokens", Some((Endpoint::Tokens, Scope::Admin, None))),
            ("DELETE", "/v1/tokens/tok_1", Some((Endpoint::RevokeToken, Scope::Admin, Some("tok_1")))),
            ("GET", "/v1/audit", Some((Endpoint::Audit, Scope::Admin, None))),
            ("POST", "/v1/keys", Some((Endpoint::CreateKey, Scope::Admin, None))),
            ("GET", "/v1/keys", Some((Endpoint::Keys, Scope::Admin, None))),
            ("DELETE", "/v1/keys/NIMK1", Some((Endpoint::RevokeKey, Scope::Admin, Some("NIMK1")))),
            ("GET", "/v1/keys/NIMK1", None),
            ("POST", "/2015-03-31/functions/f/invocations", Some((Endpoint::Invoke, Scope::Invoke, Some("f")))),
            ("GET", "/v1/kv/cache", Some((Endpoint::KvKeys, Scope::Read, Some("cache")))),
            ("DELETE", "/v1/kv/cache", Some((Endpoint::KvDeleteNamespace, Scope::Admin, Some("cache")))),
            ("DELETE", "/v1/kv/cache/k", Some((Endpoint::KvDelete, Scope::Deploy, Some("cache")))),
            ("PUT", "/v1/kv/cache/k", Some((Endpoint::KvPut, Scope::Deploy, Some("cache")))),
            ("GET", "/v1/kv/cache/a/b", None),
            ("DELETE", "/v1/app", None),
            ("GET", "/v1/tokens/tok_1", None),
            ("GET", "/v1/nothing", None),
            ("GET", "/v1/functions/a/b/logs", None),
        ];
        for (method, path, want) in cases {
            let got = find(method, &split(path));
            let key = path.strip_prefix("/v1/kv/cache/").map(str::to_owned);
            let want = want.map(|(endpoint, scope, param)| Matched {
                endpoint,
                scope,
                param: param.map(str::to_owned),
                key: key.clone(),
            });
            assert_eq!(got, want, "{method} {path}");
        }
    }

    /// The rule in the module docs holds for every row, and every endpoint has exactly one row.
    #[test]
    fn the_table_follows_the_rule() {
        for (method, path, endpoint, scope) in ENDPOINTS {
            let admin_only = ["/v1/tokens", "/v1/keys", "/v1/audit", "/v1/dlq/redrive", "/v1/dlq/purge"];
            let admin = admin_only.iter().any(|p| path.starts_with(p))
                || [("DELETE", "/v1/kv/{name}"), ("DELETE", "/v1/buckets/{name}")].contains(&(*method, *path))
                || (path.starts_with("/v1/queues/") && *method == "POST");
            let want = match (*method, path.starts_with("/v1/")) {
                (_, true) if admin => Scope::Admin,
                ("GET", true) => Scope::Read,
                (_, true) => Scope::Deploy,
                (_, false) => Scope::Invoke,
            };
            assert_eq!(*scope, want, "{method} {path}");
            assert_eq!(ENDPOINTS.iter().filter(|(.., e, _)| e == endpoint).count(), 1, "{endpoint:?}");
            assert_eq!(scope_of(*endpoint), *scope);
        }
        // Each row is the first match for its own path: no earlier row shadows it.
        for (m, p, endpoint, _) in ENDPOINTS {
            let example = p.replace("{name}", "x").replace("{id}", "x").replace("{key}", "x");
            assert_eq!(find(m, &split(&example)).map(|f| f.endpoint), Some(*endpoint), "{m} {p}");
        }
    }

    /// nimbus-api's endpoint table documents this one: every row there names the scope this
    /// table needs, and every row here is documented there.
    #[test]
    fn the_api_docs_show_these_scopes() {
        let docs = include_str!("../../nimbus-api/src/lib.rs");
        let mut documented = Vec::new();
        for line in docs.lines().filter_map(|l| l.strip_prefix("//! | `")) {
            let cells: Vec<&str> = line.split(" | ").map(str::trim).collect();
            let scope = cells.last().and_then(|c| Scope::parse(c.trim_end_matches('|').trim()));
            let Some(scope) = scope else { panic!("no scope in the docs row `{line}") };
            let first = format!("`{}", cells[0]);
            for call in first.split('`').skip(1).step_by(2) {
                let (method, path) = call.split_once(' ').unwrap();
                let path = path.split('?').next().unwrap();
                let found = find(method, &split(path)).unwrap_or_else(|| panic!("the docs list {call}; no row here"));
                assert_eq!(found.scope, scope, "{call}");
                documented.push(found.endpoint);
            }
        }
        for (method, path, endpoint, _) in ENDPOINTS {
            assert!(documented.contains(endpoint), "{method} {path} is not in nimbus-api's endpoint table");
        }
    }

    #[test]
    fn refusals_name_the_scope_needed() {
        assert_eq!(
            needs("POST /v1/rollback", Scope::Deploy, "token ci", Scope::Read),
            "POST /v1/rollback needs a token with scope deploy (or admin); token ci has scope read"
        );
        assert!(!needs("GET /v1/tokens", Scope::Admin, "x", Scope::Read).contains("or admin"));
    }
}
