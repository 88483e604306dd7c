//! Client commands for credentials and the audit log (`nimbus token …`, `nimbus audit`): thin
//! wrappers over `/v1/tokens` and `/v1/audit`, reading `nimbus-api` types.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use nimbus_api as api;

use crate::client::Client;
use crate::{Remote, TokenAction};

fn here() -> PathBuf {
    PathBuf::from(".")
}

/// Milliseconds since the epoch as `2026-11-30 14:05:09` (UTC).
pub(crate) fn time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

pub async fn token(action: TokenAction, remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &here())?;
    match action {
        TokenAction::Create { scope, functions, expires, name, json } => {
            // An RFC 3339 time is `expires`; anything else is a duration for the server to read.
            let (expires_in, expires) = match expires {
                Some(e) if chrono::DateTime::parse_from_rfc3339(&e).is_ok() => (None, Some(e)),
                other => (other, None),
            };
            let body = api::TokenRequest { scope, functions, expires_in, expires, name };
            let created: api::CreatedToken = client.post("/v1/tokens", &body, "the token was not created").await?;
            for w in &created.warnings {
                eprintln!("warning: {w}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("{}", created.secret);
                eprintln!(
                    "created token {} ({}). The secret above is shown only this once: nimbus keeps only its hash.",
                    created.token.id,
                    describe(&created.token)
                );
            }
        }
        TokenAction::Ls { json } => {
            let list: Vec<api::TokenInfo> = client.get("/v1/tokens").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", tokens_table(&list));
            }
        }
        TokenAction::Revoke { id } => {
            let t: api::TokenInfo = client.delete(&format!("/v1/tokens/{}", crate::commands::enc(&id))).await?;
            println!("revoked token {} ({}); it no longer works", t.id, describe(&t));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "scope invoke, name \"ci\", functions a, b, expires 2026-12-30 10:00:00 UTC".
fn describe(t: &api::TokenInfo) -> String {
    let mut parts = vec![format!("scope {}", t.scope)];
    if let Some(n) = &t.name {
        parts.push(format!("name {n:?}"));
    }
    if !t.functions.is_empty() {
        parts.push(format!("functions {}", t.functions.join(", ")));
    }
    parts.push(match t.expires_ms {
        Some(e) => format!("expires {} UTC", time(e)),
        None => "does not expire".to_owned(),
    });
    parts.join(", ")
}

fn tokens_table(list: &[api::TokenInfo]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20}  {:<16} {:<7} {:<20} {:<19}  {:<19}  {:<19}",
        "ID", "NAME", "SCOPE", "FUNCTIONS", "CREATED (UTC)", "EXPIRES", "LAST USED"
    );
    for t in list {
        let functions = if t.functions.is_empty() { "-".to_owned() } else { t.functions.join(",") };
        let expires = match t.expires_ms {
            Some(_) if t.expired => "expired".to_owned(),
            Some(e) => time(e),
            None => "never".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<20}  {:<16} {:<7} {:<20} {:<19}  {:<19}  {:<19}",
            t.id,
            t.name.as_deref().unwrap_or("-"),
            t.scope,
            functions,
            time(t.created_ms),
            expires,
            t.last_used_ms.map_or_else(|| "-".to_owned(), time),
        );
    }
    out
}

/// `nimbus audit`'s flags.
#[derive(clap::Args)]
pub struct AuditArgs {
    /// How far back: a duration ("24h", "30d"), a date ("2026-11-01") or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    since: String,
    /// At most this many entries (newest first).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Only this action: deploy, rollback, dlq.redrive, dlq.purge, token.create, token.revoke,
    /// key.create, key.revoke, login, auth.failed, auth.denied, kv.delete-namespace,
    /// bucket.delete, queue.purge, queue.redrive, traffic, canary or cache.purge.
    #[arg(long)]
    action: Option<String>,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

pub async fn audit(args: AuditArgs) -> Result<ExitCode> {
    let client = Client::new(&args.remote, &here())?;
    let enc = crate::commands::enc;
    let mut path = format!("/v1/audit?since={}&limit={}", enc(&args.since), args.limit);
    if let Some(a) = &args.action {
        path.push_str(&format!("&action={}", enc(a)));
    }
    let entries: Vec<api::AuditEntry> = client.get(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        print!("{}", audit_table(&entries));
    }
    Ok(ExitCode::SUCCESS)
}

fn audit_table(entries: &[api::AuditEntry]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{:<19}  {:<12} {:<7} {:<20} {:<15} WHAT", "TIME (UTC)", "ACTION", "OUTCOME", "WHO", "FROM");
    for e in entries {
        let times = if e.count > 1 { format!(" (×{})", e.count) } else { String::new() };
        let error = e.error.as_ref().map(|m| format!(": {m}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<19}  {:<12} {:<7} {:<20} {:<15} {}{times}{error}",
            time(e.ts_ms),
            e.action,
            e.outcome,
            e.actor,
            e.source,
            e.target
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_what_matters_and_no_secret() {
        let t = api::TokenInfo {
            id: "tok_0123456789abcdef".into(),
            name: Some("ci".into()),
            scope: "invoke".into(),
            functions: vec!["a".into(), "b".into()],
            created_ms: 0,
            expires_ms: Some(1000),
            expired: true,
            revoked_ms: None,
            last_used_ms: None,
        };
        let text = tokens_table(std::slice::from_ref(&t));
        assert!(text.contains("tok_0123456789abcdef  ci"), "{text}");
        assert!(text.contains("a,b") && text.contains("expired") && text.contains("1970-01-01 00:00:00"), "{text}");
        assert_eq!(describe(&t), "scope invoke, name \"ci\", functions a, b, expires 1970-01-01 00:00:01 UTC");

        let e = api::AuditEntry {
            ts_ms: 0,
            action: "auth.failed".into(),
            target: "GET /v1/app".into(),
            outcome: "error".into(),
            error: Some("unknown or revoked token".into()),
            actor: "unknown token".into(),
            token_id: None,
            source: "10.0.0.1".into(),
            count: 37,
        };
        let text = audit_table(&[e]);
        assert!(text.contains("GET /v1/app (×37): unknown or revoked token"), "{text}");
        assert!(text.contains("auth.failed  error   unknown token"), "{text}");
    }
}
