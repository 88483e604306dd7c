//! `nimbus traffic …` and `nimbus deploy --canary …`: the live alias's traffic split and the
//! canary flags, thin clients of `/v1/aliases/{name}/traffic` and `POST /v1/deployments`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use http::Method;
use nimbus_api as api;

use crate::client::Client;
use crate::Remote;

#[derive(clap::Subcommand)]
pub enum TrafficAction {
    /// Split an alias's traffic: `nimbus traffic set live v7=90 v8=10` (shares in percent,
    /// summing to 100), or `nimbus traffic set live v8` for all of it. Ends a running canary.
    Set {
        /// The alias (only `live` exists).
        alias: String,
        /// vN=PERCENT for each version, or one vN.
        #[arg(required = true, value_parser = parse_weight)]
        weights: Vec<(u64, u32)>,
    },
    /// Show how an alias's traffic is split, and its canary (running, or how the last ended).
    Show {
        #[arg(default_value = "live")]
        alias: String,
        #[arg(long)]
        json: bool,
    },
}

/// `nimbus deploy`'s canary flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CanaryArgs {
    /// Deploy as a canary with this share of the traffic (e.g. 10%); the server then moves it
    /// through 25% and 50% to 100% over --for, or rolls it back when it is unhealthy.
    #[arg(long, value_name = "PERCENT", value_parser = parse_share, requires_all = ["window", "max_error_rate"], help_heading = "Canary")]
    pub canary: Option<u32>,
    /// How long the canary takes to reach 100% (e.g. 10m).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_window, requires = "canary", help_heading = "Canary")]
    pub window: Option<Duration>,
    /// Roll back when more than this share of the new version's requests fail (5xx), e.g. 2%.
    #[arg(long, value_name = "PERCENT", value_parser = parse_rate, requires = "canary", help_heading = "Canary")]
    pub max_error_rate: Option<f64>,
    /// Roll back when the new version's p99 latency is above this (e.g. 500ms).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, requires = "canary", help_heading = "Canary")]
    pub max_p99: Option<Duration>,
}

impl CanaryArgs {
    /// The query `POST /v1/deployments` takes for these flags ("" for a plain deploy).
    pub fn query(&self) -> String {
        let Some(percent) = self.canary else { return String::new() };
        let mut q = format!("?canary={percent}");
        if let Some(w) = self.window {
            let _ = write!(q, "&for={}ms", w.as_millis());
        }
        if let Some(r) = self.max_error_rate {
            let _ = write!(q, "&maxErrorRate={r}");
        }
        if let Some(p) = self.max_p99 {
            let _ = write!(q, "&maxP99={}ms", p.as_millis());
        }
        q
    }
}

fn percent(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches('%').trim();
    n.parse::<f64>()
        .ok()
        .filter(|p| p.is_finite())
        .ok_or_else(|| format!("{s:?} is not a percentage; write it like 10%"))
}

fn parse_share(s: &str) -> Result<u32, String> {
    match percent(s)? {
        p if p.fract() == 0.0 && (1.0..=99.0).contains(&p) => Ok(p as u32),
        _ => Err("give the new version's first share as a whole percentage from 1% to 99%".into()),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match percent(s)? {
        p if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err("write an error rate from 0% to 100%, like 2%".into()),
    }
}

fn parse_window(s: &str) -> Result<Duration, String> {
    match crate::parse_duration(s)? {
        d if d >= Duration::from_secs(1) => Ok(d),
        _ => Err("give the canary at least 1s to reach 100%".into()),
    }
}

/// `v7=90` → (7, 90); `v8` → (8, 100).
fn parse_weight(s: &str) -> Result<(u64, u32), String> {
    let (v, p) = s.split_once('=').unwrap_or((s, "100"));
    let version = v
        .trim()
        .strip_prefix('v')
        .unwrap_or(v.trim())
        .parse::<u64>()
        .map_err(|_| format!("{s:?}: name a version by number, like v7=90 (or v7 for all the traffic)"))?;
    let share = p
        .trim()
        .trim_end_matches('%')
        .parse::<u32>()
        .map_err(|_| format!("{s:?}: give the share as a whole percentage, like v7=90"))?;
    Ok((version, share))
}

pub async fn traffic(action: TrafficAction, remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &std::path::PathBuf::from("."))?;
    match action {
        TrafficAction::Set { alias, weights } => {
            // The wire format is a map: a version named twice would silently lose one share.
            if let Some((v, _)) = weights.iter().find(|(v, _)| weights.iter().filter(|(w, _)| w == v).count() > 1) {
                bail!("traffic not changed: version {v} is named twice; write it like `v7=90 v8=10`");
            }
            let request = api::TrafficRequest { weights: weights.iter().map(|(v, p)| (v.to_string(), *p)).collect() };
            let body = Bytes::from(serde_json::to_vec(&request)?);
            let path = format!("/v1/aliases/{alias}/traffic");
            let r = client.call(Method::PUT, &path, body, &[("content-type", "application/json".into())]).await?;
            if !r.status.is_success() {
                bail!("traffic not changed: {}", r.error_text());
            }
            print!("{}", show_text(&r.parse()?));
        }
        TrafficAction::Show { alias, json } => {
            let info: api::TrafficInfo = client.get(&format!("/v1/aliases/{alias}/traffic")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", show_text(&info));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `nimbus traffic show` prints.
pub fn show_text(info: &api::TrafficInfo) -> String {
    let mut out = String::new();
    let mut weights: Vec<(u64, u32)> =
        info.weights.iter().filter_map(|(v, p)| v.parse().ok().map(|v| (v, *p))).collect();
    weights.sort_unstable();
    let split: Vec<String> = weights.iter().map(|(v, p)| format!("v{v}={p}%")).collect();
    let _ = writeln!(out, "{}  {}", info.alias, split.join(" "));
    if let Some(c) = &info.canary {
        let p99 = c.max_p99_ms.map(|ms| format!(", p99 at most {ms} ms")).unwrap_or_default();
        let _ = writeln!(
            out,
            "canary: v{} at {}% (from v{}), {} s to 100%, error rate at most {:.1}%{p99}",
            c.new_version,
            c.percent,
            c.old_version,
            c.window_ms / 1000,
            c.max_error_rate * 100.0
        );
    }
    if let Some(e) = &info.last_canary {
        let verb = if e.promoted { "promoted" } else { "rolled back" };
        let _ = writeln!(out, "last canary: v{} {verb} (old v{}): {}", e.new_version, e.old_version, e.reason);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_flags_parse_with_clear_errors() {
        assert_eq!(parse_weight("v7=90"), Ok((7, 90)));
        assert_eq!(parse_weight("8"), Ok((8, 100)));
        assert!(parse_weight("vx=10").unwrap_err().contains("name a version by number"));
        assert!(parse_weight("v7=ten").unwrap_err().contains("whole percentage"));
        assert_eq!(parse_share("10%"), Ok(10));
        assert!(parse_share("100%").is_err());
        assert!(parse_share("ten").unwrap_err().contains("not a percentage"));
        assert_eq!(parse_rate("2%"), Ok(2.0));
        assert!(parse_window("10ms").is_err());
    }
}
