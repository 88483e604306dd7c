//! `nimbus cache purge`: drop entries of the gateway's response cache, a thin client of
//! `POST /v1/cache/purge`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use nimbus_api as api;

use crate::client::Client;
use crate::Remote;

#[derive(clap::Subcommand)]
pub enum CacheAction {
    /// Drop cached responses whose path starts with --prefix, or whose `Cache-Tag` lists --tag
    /// (both: either); `--prefix /` drops everything.
    Purge {
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        tag: Option<String>,
    },
}

pub async fn cache(action: CacheAction, remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &PathBuf::from("."))?;
    match action {
        CacheAction::Purge { prefix, tag } => {
            if prefix.is_none() && tag.is_none() {
                bail!("say what to purge: --prefix /path (--prefix / for everything) or --tag TAG");
            }
            let body = api::CachePurgeRequest { prefix, tag };
            let r: api::CachePurged = client.post("/v1/cache/purge", &body, "cache purge failed").await?;
            println!("{} cached response(s) purged", r.purged);
        }
    }
    Ok(ExitCode::SUCCESS)
}
