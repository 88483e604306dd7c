//! `nimbus keys create|ls|revoke`: managed AWS access keys for the AWS port (S3 and the Invoke
//! API), each limited to its grants. Thin wrappers over `/v1/keys`, reading `nimbus-api` types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;
use nimbus_api as api;

use crate::access::time;
use crate::client::Client;
use crate::Remote;

#[derive(Subcommand)]
pub enum KeysAction {
    /// Create a key pair; prints a shared-credentials block with the secret (shown only this
    /// once) on stdout, so `>> ~/.aws/credentials` keeps it.
    Create {
        /// Whose key it is or what for; the audit log names the key by it.
        name: String,
        /// A bucket and what the key may do with its objects: BUCKET=read, BUCKET=write or
        /// BUCKET=read-write (repeat for more).
        #[arg(long = "bucket", value_name = "BUCKET=ACCESS")]
        buckets: Vec<String>,
        /// A KV namespace and what the key may do with its keys: NS=read|write|read-write
        /// (repeat for more).
        #[arg(long = "kv", value_name = "NS=ACCESS")]
        kv: Vec<String>,
        /// A function the key may call through the Invoke API (repeat for more).
        #[arg(long = "function", value_name = "NAME")]
        functions: Vec<String>,
        /// When it stops working, as a duration: "30d", "12h" [default: never]
        #[arg(long, value_name = "DURATION", conflicts_with = "expires")]
        expires_in: Option<String>,
        /// When it stops working, as an RFC 3339 time: "2027-01-31T00:00:00Z"
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
        /// The profile name of the printed credentials block [default: NAME]
        #[arg(long)]
        profile: Option<String>,
        /// Print the API's JSON (the secret included) instead.
        #[arg(long)]
        json: bool,
    },
    /// List keys: id, name, grants, created, expires, state (never a secret).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id: the AWS port refuses it from the next request on.
    Revoke { id: String },
}

/// `NAME=ACCESS` flags as the API's map; `flag` names the flag in errors.
fn grants(flag: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let Some((name, access)) = p.split_once('=') else {
            bail!("--{flag} {p:?}: write NAME=read, NAME=write or NAME=read-write");
        };
        if out.insert(name.to_owned(), access.to_owned()).is_some() {
            bail!("--{flag} names {name:?} twice; give each once");
        }
    }
    Ok(out)
}

pub async fn keys(action: KeysAction, remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &PathBuf::from("."))?;
    match action {
        KeysAction::Create { name, buckets, kv, functions, expires_in, expires, profile, json } => {
            let body = api::AccessKeyRequest {
                buckets: grants("bucket", &buckets)?,
                kv: grants("kv", &kv)?,
                name,
                functions,
                expires_in,
                expires,
            };
            let created: api::CreatedAccessKey = client.post("/v1/keys", &body, "the key was not created").await?;
            for w in &created.warnings {
                eprintln!("warning: {w}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                let profile = profile.unwrap_or_else(|| created.key.name.clone());
                print!("{}", credentials_block(&profile, &created));
                eprintln!(
                    "created access key {} ({}). The secret is shown only this once; `nimbus keys revoke {}` \
                     ends it.",
                    created.access_key_id,
                    describe(&created.key),
                    created.access_key_id
                );
            }
        }
        KeysAction::Ls { json } => {
            let list: Vec<api::AccessKeyInfo> = client.get("/v1/keys").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", keys_table(&list));
            }
        }
        KeysAction::Revoke { id } => {
            let k: api::AccessKeyInfo = client.delete(&format!("/v1/keys/{}", crate::commands::enc(&id))).await?;
            println!("revoked access key {} ({}); the AWS port refuses it from now on", k.id, describe(&k));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The pair in the AWS shared-credentials format.
fn credentials_block(profile: &str, k: &api::CreatedAccessKey) -> String {
    format!("[{profile}]\naws_access_key_id = {}\naws_secret_access_key = {}\n", k.access_key_id, k.secret_access_key)
}

/// "photos=read logs=read-write kv:cache=write fn:resize".
fn grants_text(k: &api::AccessKeyInfo) -> String {
    let mut parts: Vec<String> = k.buckets.iter().map(|(b, a)| format!("{b}={a}")).collect();
    parts.extend(k.kv.iter().map(|(n, a)| format!("kv:{n}={a}")));
    parts.extend(k.functions.iter().map(|f| format!("fn:{f}")));
    parts.join(" ")
}

/// "name \"ci\", photos=read, expires 2026-12-30 10:00:00 UTC".
fn describe(k: &api::AccessKeyInfo) -> String {
    let expires = match k.expires_ms {
        Some(e) => format!("expires {} UTC", time(e)),
        None => "does not expire".to_owned(),
    };
    format!("name {:?}, {}, {expires}", k.name, grants_text(k))
}

fn keys_table(list: &[api::AccessKeyInfo]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20}  {:<16} {:<30} {:<19}  {:<19}  STATE",
        "ID", "NAME", "GRANTS", "CREATED (UTC)", "EXPIRES"
    );
    for k in list {
        let expires = k.expires_ms.map_or_else(|| "never".to_owned(), time);
        let _ = writeln!(
            out,
            "{:<20}  {:<16} {:<30} {:<19}  {:<19}  {}",
            k.id,
            k.name,
            grants_text(k),
            time(k.created_ms),
            expires,
            k.state
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> api::AccessKeyInfo {
        api::AccessKeyInfo {
            id: "NIMKABCDEFGHIJKLMNOP".into(),
            name: "ci".into(),
            buckets: BTreeMap::from([("photos".into(), "read".into())]),
            kv: BTreeMap::from([("cache".into(), "read-write".into())]),
            functions: vec!["resize".into()],
            created_ms: 0,
            expires_ms: Some(1000),
            revoked_ms: None,
            state: "expired".into(),
        }
    }

    #[test]
    fn flags_become_grants_or_say_what_is_wrong() {
        let m = grants("bucket", &["a=read".into(), "b=read-write".into()]).unwrap();
        assert_eq!(m.get("b").map(String::as_str), Some("read-write"));
        assert!(grants("bucket", &["a".into()]).unwrap_err().to_string().contains("NAME=read"));
        assert!(grants("kv", &["a=read".into(), "a=write".into()]).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn outputs_show_grants_and_the_block_is_aws_shaped() {
        let table = keys_table(&[info()]);
        assert!(table.contains("NIMKABCDEFGHIJKLMNOP  ci"), "{table}");
        assert!(table.contains("photos=read kv:cache=read-write fn:resize"), "{table}");
        assert!(table.trim_end().ends_with("expired"), "{table}");
        assert_eq!(
            describe(&info()),
            "name \"ci\", photos=read kv:cache=read-write fn:resize, expires 1970-01-01 00:00:01 UTC"
        );
        let created = api::CreatedAccessKey {
            access_key_id: "NIMK1".into(),
            secret_access_key: "s3cr3t".into(),
            key: info(),
            warnings: vec![],
        };
        assert_eq!(
            credentials_block("p", &created),
            "[p]\naws_access_key_id = NIMK1\naws_secret_access_key = s3cr3t\n"
        );
    }
}
