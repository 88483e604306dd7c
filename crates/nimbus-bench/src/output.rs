//! What every benchmark writes besides its own figures: the machine it ran on, each throughput
//! phase as JSON, and the JSON document itself (`--out`).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::load::{stats, Throughput};

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// What the machine is and how busy it was.
pub fn machine() -> Value {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()));
    let mem_kib = read("/proc/meminfo").lines().find_map(|l| {
        l.strip_prefix("MemTotal:").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse::<u64>().ok())
    });
    json!({
        "nproc": std::thread::available_parallelism().map(usize::from).ok(),
        "cpuModel": model,
        "memTotalMiB": mem_kib.map(|k| k / 1024),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "loadavg": read("/proc/loadavg").trim(),
    })
}

pub fn tput_json(t: &Throughput) -> Value {
    json!({
        "concurrency": t.concurrency, "ok": t.ok, "errors": t.errors, "firstError": t.first_error,
        "secs": t.secs, "requestsPerSec": t.rps(), "latencyUs": stats(&t.latencies_us).json(),
        "machineCpuUsPerRequest": t.machine_cpu_us_per_req,
        "cpuUsPerRequest": t.cpu_split.map(|c| json!({"server": c.server_us, "serverChildren": c.children_us, "loadGenerator": c.client_us})),
    })
}

/// Write the JSON results to `out` and remove the temp dir `root` unless `keep`.
pub fn save(out: &Path, doc: &Value, root: &Path, keep: bool) -> Result<()> {
    write_json(out, doc)?;
    if keep {
        println!("temp dir kept: {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(root);
    }
    Ok(())
}

/// Write the JSON results to `out` (creating its directory), for a benchmark without a temp dir.
pub fn write_json(out: &Path, doc: &Value) -> Result<()> {
    if let Some(dir) = out.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    std::fs::write(out, serde_json::to_string_pretty(doc)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("\nresults written to {}", out.display());
    Ok(())
}
