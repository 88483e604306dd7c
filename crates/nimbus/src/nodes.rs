//! `nimbus nodes`: the live nodes of the cluster (or the one node without `--cluster`), a thin
//! client of `GET /v1/nodes`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use nimbus_api as api;

use crate::client::Client;
use crate::Remote;

pub async fn nodes(json: bool, remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &PathBuf::from("."))?;
    let list: Vec<api::NodeInfo> = client.get("/v1/nodes").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table(&list, nimbus_core::ids::now_ms()));
    Ok(ExitCode::SUCCESS)
}

/// The table: one line per node, `now` (Unix ms) to say how long ago each was heard from.
fn table(list: &[api::NodeInfo], now: u64) -> String {
    let mut out = format!(
        "{:<24} {:<28} {:<10} {:>9} {:>6} {:>5} {:>9}\n",
        "NODE", "ADDRESS", "VERSION", "IN FLIGHT", "LOAD", "WARM", "LAST SEEN"
    );
    for n in list {
        let url = if n.url.is_empty() { "(starting)" } else { n.url.as_str() };
        let load = n.load_average.map_or_else(|| "-".to_owned(), |l| format!("{l:.2}"));
        let seen = format!("{:.1}s ago", now.saturating_sub(n.last_seen_ms) as f64 / 1000.0);
        out.push_str(&format!(
            "{:<24} {:<28} {:<10} {:>9} {:>6} {:>5} {:>9}\n",
            n.name, url, n.version, n.in_flight, load, n.warm_instances, seen
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_at_a_glance() {
        let node = |name: &str, url: &str, seen: u64| api::NodeInfo {
            name: name.into(),
            url: url.into(),
            version: "0.1.0".into(),
            started_ms: 0,
            in_flight: 3,
            load_average: Some(0.5),
            warm_instances: 7,
            last_seen_ms: seen,
        };
        let list = [node("node-1", "http://127.0.0.1:8081", 9_200), node("node-2", "", 10_000)];
        let want = "\
NODE                     ADDRESS                      VERSION    IN FLIGHT   LOAD  WARM LAST SEEN
node-1                   http://127.0.0.1:8081        0.1.0              3   0.50     7  0.8s ago
node-2                   (starting)                   0.1.0              3   0.50     7  0.0s ago
";
        assert_eq!(table(&list, 10_000), want);
    }
}
