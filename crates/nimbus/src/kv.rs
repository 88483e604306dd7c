//! `nimbus kv …`: the KV store from the command line, a thin client of `/v1/kv` reading
//! `nimbus-api` types. Keys travel percent-encoded as one path segment.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::Method;
use nimbus_api as api;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::client::Client;
use crate::Remote;

/// Everything but unreserved characters is encoded (a `/` in a key too).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

#[derive(clap::Subcommand)]
pub enum KvAction {
    /// List the namespaces (with key counts and sizes), or the keys of one.
    Ls {
        name: Option<String>,
        /// Only keys starting with this.
        #[arg(long, requires = "name")]
        prefix: Option<String>,
        /// Show at most this many keys.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print a key's value (as stored: bytes).
    Get { name: String, key: String },
    /// Write a key.
    Put {
        name: String,
        key: String,
        /// The value (or --file).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Expire the key after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Delete a key.
    Del { name: String, key: String },
    /// Delete a namespace and every key in it (a deploy never does).
    RmNamespace { name: String },
}

fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn key_path(name: &str, key: &str) -> String {
    format!("/v1/kv/{}/{}", segment(name), segment(key))
}

pub async fn kv(action: KvAction, remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &PathBuf::from("."))?;
    match action {
        KvAction::Ls { name: None, json, .. } => namespaces(&client, json).await,
        KvAction::Ls { name: Some(name), prefix, limit, json } => {
            keys(&client, &name, prefix.as_deref().unwrap_or_default(), limit, json).await
        }
        KvAction::Get { name, key } => {
            let r = client.call(Method::GET, &key_path(&name, &key), Bytes::new(), &[]).await?;
            if !r.status.is_success() {
                bail!("{} ({})", r.error_text(), r.status);
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&r.body).and_then(|()| out.flush()).context("cannot write the value to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        KvAction::Put { name, key, value, file, ttl } => put(&client, &name, &key, value, file, ttl).await,
        KvAction::Del { name, key } => {
            let d: api::KvDeleted = client.delete(&key_path(&name, &key)).await?;
            println!("{}", if d.deleted { format!("deleted {key}") } else { format!("{key} was not there") });
            Ok(ExitCode::SUCCESS)
        }
        KvAction::RmNamespace { name } => {
            let _: api::KvDeleted = client.delete(&format!("/v1/kv/{}", segment(&name))).await?;
            println!("deleted KV namespace {name} and every key in it");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn namespaces(client: &Client, json: bool) -> Result<ExitCode> {
    let list: Vec<api::KvNamespace> = client.get("/v1/kv").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("no KV namespaces; declare one as [kv.NAME] in nimbus.toml and deploy");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24} {:>10} {:>12}", "NAMESPACE", "KEYS", "BYTES");
    for n in list {
        println!("{:<24} {:>10} {:>12}", n.name, n.keys, n.bytes);
    }
    Ok(ExitCode::SUCCESS)
}

/// The keys of `name`, page by page, up to `limit` of them.
async fn keys(client: &Client, name: &str, prefix: &str, limit: usize, json: bool) -> Result<ExitCode> {
    let mut shown: Vec<api::KvKey> = Vec::new();
    let mut cursor: Option<String> = None;
    let more = loop {
        let want = limit.saturating_sub(shown.len()).clamp(1, 1000);
        let mut path = format!("/v1/kv/{}?limit={want}&prefix={}", segment(name), segment(prefix));
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", segment(c)));
        }
        let page: api::KvKeys = client.get(&path).await?;
        shown.extend(page.keys);
        cursor = page.cursor;
        if cursor.is_none() || shown.len() >= limit {
            break cursor.is_some();
        }
    };
    shown.truncate(limit);
    if json {
        println!("{}", serde_json::to_string_pretty(&api::KvKeys { keys: shown, cursor })?);
        return Ok(ExitCode::SUCCESS);
    }
    for k in &shown {
        match k.expires_ms {
            Some(at) => println!("{}\texpires {}", k.name, crate::access::time(at)),
            None => println!("{}", k.name),
        }
    }
    if more {
        eprintln!("(more keys: pass a larger --limit)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn put(
    client: &Client,
    name: &str,
    key: &str,
    value: Option<String>,
    file: Option<PathBuf>,
    ttl: Option<u64>,
) -> Result<ExitCode> {
    let body = match (value, file) {
        (Some(v), _) => Bytes::from(v),
        (None, Some(f)) => Bytes::from(std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?),
        (None, None) => bail!("give the value, or --file PATH"),
    };
    let mut path = key_path(name, key);
    if let Some(t) = ttl {
        path.push_str(&format!("?ttl={t}"));
    }
    let r = client.call(Method::PUT, &path, body, &[("content-type", "application/octet-stream".into())]).await?;
    if !r.status.is_success() {
        bail!("{} ({})", r.error_text(), r.status);
    }
    let w: api::KvWritten = r.parse()?;
    println!("wrote {key} (version {})", w.version);
    Ok(ExitCode::SUCCESS)
}
