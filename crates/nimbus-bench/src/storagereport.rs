//! The settings, results and report of `nimbus-bench storage`: a line per phase (S3 PUT/GET per
//! system, size and concurrency; KV get/put/increment; the disk), then the ratios the issue's
//! targets are stated in: nimbus/moto ops/s (≥ 10×), 1 MiB PUT MB/s over the disk's sequential
//! write MB/s (≥ 50 %), KV increments/s (≥ 20,000). Beside each moto ratio: nimbus over the bare
//! in-memory object server, and that server over moto (when it is under 10×, no server reaches
//! the target on this machine).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::load::{stats, Throughput};
use crate::output::tput_json;

/// The KV values' size (put, and the keys get reads).
pub const KV_VALUE_BYTES: u64 = 100;

/// Targets (issue 13, BENCHMARKS.md § Storage).
pub const MOTO_RATIO_TARGET: f64 = 10.0;
pub const DISK_SHARE_TARGET: f64 = 0.5;
pub const INCREMENT_TARGET: f64 = 20_000.0;
const MIB: f64 = 1_048_576.0;

/// How much of everything to do.
pub struct Settings {
    pub quick: bool,
    pub runs: usize,
    pub sizes: [u64; 2],
    pub concurrency: [usize; 2],
    pub kv_concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Operations per phase at most (small objects and KV; 1 MiB objects).
    pub max: u64,
    pub max_large: u64,
    /// Objects each GET phase reads in turn; KV keys each phase uses.
    pub get_keys: u64,
    pub kv_keys: u64,
    /// MiB the disk measurement writes.
    pub disk_mib: u64,
}

impl Settings {
    pub fn new(quick: bool, runs: usize) -> Settings {
        let (warmup, duration, max, max_large, get_keys, kv_keys, disk_mib) = if quick {
            (Duration::from_millis(50), Duration::from_millis(250), 2_000, 200, 4, 50, 16)
        } else {
            (Duration::from_millis(500), Duration::from_secs(3), 2_000_000, 50_000, 32, 1_000, 512)
        };
        Settings {
            quick,
            runs,
            sizes: [4 << 10, 1 << 20],
            concurrency: [1, 32],
            kv_concurrency: 32,
            warmup,
            duration,
            max,
            max_large,
            get_keys,
            kv_keys,
            disk_mib,
        }
    }

    fn json(&self) -> Value {
        json!({
            "quick": self.quick, "runs": self.runs, "objectSizes": self.sizes, "concurrency": self.concurrency,
            "kvConcurrency": self.kv_concurrency, "warmupSecs": self.warmup.as_secs_f64(),
            "phaseSecs": self.duration.as_secs_f64(), "phaseMaxOps": self.max, "phaseMaxOps1MiB": self.max_large,
            "getObjects": self.get_keys, "kvKeys": self.kv_keys, "diskMiB": self.disk_mib,
        })
    }
}

/// The disk's sequential write: `mib` MiB in 1 MiB chunks, then fsync, in `secs`.
pub struct Disk {
    pub mib: u64,
    pub secs: f64,
}

impl Disk {
    pub fn mb_per_sec(&self) -> f64 {
        self.mib as f64 * MIB / 1e6 / self.secs
    }
}

/// One throughput phase: `system` ("nimbus", "moto"), `op` ("put", "get", "increment"), object
/// or value size.
pub struct Phase {
    /// "s3" or "kv".
    pub store: &'static str,
    pub system: &'static str,
    pub op: &'static str,
    pub size: u64,
    pub tput: Throughput,
}

impl Phase {
    fn mb_per_sec(&self) -> f64 {
        self.tput.rps() * self.size as f64 / 1e6
    }
}

pub struct RunResult {
    pub run: usize,
    pub disk: Disk,
    pub s3: Vec<Phase>,
    pub kv: Vec<Phase>,
}

impl RunResult {
    fn s3(&self, system: &str, op: &str, size: u64, c: usize) -> Option<&Phase> {
        self.s3.iter().find(|p| p.system == system && p.op == op && p.size == size && p.tput.concurrency == c)
    }
}

pub fn size_label(size: u64) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

pub fn table(s: &Settings, runs: &[RunResult], root: &Path, moto_note: Option<&str>) -> String {
    let mut o = String::new();
    intro(&mut o, s, root, moto_note);
    let _ = writeln!(
        o,
        "\n{:<4}{:<8}{:<13}{:>6}{:>4}{:>10}{:>9}{:>9}{:>9}{:>22}{:>8}",
        "run", "system", "op", "size", "c", "ops/s", "MB/s", "p50 ms", "p99 ms", "CPU µs/op srv/client", "errors"
    );
    for r in runs {
        let _ = writeln!(
            o,
            "{:<4}{:<8}{:<13}{:>6}{:>4}{:>10}{:>9.0}{:>9}{:>9}{:>22}{:>8}",
            r.run,
            "disk",
            "write+sync",
            "1 MiB",
            1,
            "-",
            r.disk.mb_per_sec(),
            "-",
            "-",
            "-",
            "-"
        );
        for p in r.s3.iter().chain(&r.kv) {
            let _ = writeln!(o, "{}", phase_line(r.run, p));
            if let Some(e) = &p.tput.first_error {
                let _ = writeln!(o, "      first error: {e}");
            }
        }
    }
    targets(&mut o, s, runs, moto_note.is_some());
    o
}

fn intro(o: &mut String, s: &Settings, root: &Path, moto_note: Option<&str>) {
    let _ = writeln!(
        o,
        "\nnimbus-bench storage ({} run, {} run(s); fresh nimbus, moto and data dir each; client: one tokio thread, keep-alive hyper, 127.0.0.1)",
        if s.quick { "quick" } else { "full" },
        s.runs
    );
    let _ = writeln!(
        o,
        "  S3: path-style PUT/GET, SigV4-signed with the body's SHA-256 (as boto3 over HTTP); PUTs overwrite a ring of 64 keys, GETs read {} objects written before; {:.2} s per phase after {:.2} s warm-up",
        s.get_keys,
        s.duration.as_secs_f64(),
        s.warmup.as_secs_f64()
    );
    let _ = writeln!(o, "  a nimbus PUT is acknowledged after fsyncing the body, its directory and the metadata commit (SQLite WAL, synchronous=FULL); moto keeps objects in memory and never fsyncs");
    let _ = writeln!(o, "  bare: `nimbus-bench bare-objects`, hyper keeping bodies in memory, checking no signature and hashing nothing: the limit for any object server on this machine with this client");
    let _ = writeln!(o, "  disk: {} MiB written in 1 MiB chunks, then one fsync, in {}", s.disk_mib, root.display());
    let _ = writeln!(
        o,
        "  KV: /v1/kv (management API, admin token; functions' calls reach the same code), {}-byte values over {} keys, c={}; increment = POST ?increment=1",
        KV_VALUE_BYTES,
        s.kv_keys,
        s.kv_concurrency
    );
    if let Some(note) = moto_note {
        let _ = writeln!(o, "  moto: {note}");
    }
}

fn phase_line(run: usize, p: &Phase) -> String {
    let t = &p.tput;
    let lat = stats(&t.latencies_us);
    let cpu =
        t.cpu_split.map_or("-".to_owned(), |c| format!("{:.0} / {:.0}", c.server_us + c.children_us, c.client_us));
    let (system, op) = (p.system, format!("{} {}", p.store, p.op));
    format!(
        "{:<4}{:<8}{:<13}{:>6}{:>4}{:>10.0}{:>9.1}{:>9.2}{:>9.2}{:>22}{:>8}",
        run,
        system,
        op,
        size_label(p.size),
        t.concurrency,
        t.rps(),
        p.mb_per_sec(),
        lat.p50 / 1e3,
        lat.p99 / 1e3,
        cpu,
        t.errors
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// The ratios against moto and the disk, and the KV increment rate, each against its target.
fn targets(o: &mut String, s: &Settings, runs: &[RunResult], moto_missing: bool) {
    let _ = writeln!(o, "\nratios and targets (issue 13; BENCHMARKS.md § Storage)");
    for r in runs {
        for size in s.sizes {
            for c in s.concurrency {
                for op in ["put", "get"] {
                    let Some(n) = r.s3("nimbus", op, size, c) else { continue };
                    let line = match r.s3("moto", op, size, c) {
                        Some(m) if m.tput.rps() > 0.0 => {
                            let x = n.tput.rps() / m.tput.rps();
                            format!("{x:.1}x (>= {MOTO_RATIO_TARGET:.0}x: {})", verdict(x >= MOTO_RATIO_TARGET))
                        }
                        _ if moto_missing => "- (moto not measured)".to_owned(),
                        _ => "- (no moto figure in this run)".to_owned(),
                    };
                    let limit = limit_note(r, op, size, c).unwrap_or_default();
                    let _ = writeln!(
                        o,
                        "  run {}: {op} {} c={c}: nimbus/moto ops/s {line}{limit}",
                        r.run,
                        size_label(size)
                    );
                }
            }
        }
        disk_line(o, s, r);
        if let Some(inc) = r.kv.iter().find(|p| p.op == "increment") {
            let rps = inc.tput.rps();
            let _ = writeln!(
                o,
                "  run {}: KV increments {rps:.0}/s at c={} (>= {INCREMENT_TARGET:.0}/s: {}); the counters add up to the increments acknowledged",
                r.run,
                inc.tput.concurrency,
                verdict(rps >= INCREMENT_TARGET)
            );
        }
    }
}

/// `ops/s` of `system` over `other`'s for one row, when both were measured.
fn ratio(r: &RunResult, system: &str, other: &str, op: &str, size: u64, c: usize) -> Option<f64> {
    let (a, b) = (r.s3(system, op, size, c)?, r.s3(other, op, size, c)?);
    (b.tput.rps() > 0.0).then(|| a.tput.rps() / b.tput.rps())
}

/// "; nimbus/bare 0.61x, bare/moto 8.1x (...)" for a row the bare server was measured on.
fn limit_note(r: &RunResult, op: &str, size: u64, c: usize) -> Option<String> {
    let mut note = format!("; nimbus/bare {:.2}x", ratio(r, "nimbus", "bare", op, size, c)?);
    if let Some(reach) = ratio(r, "bare", "moto", op, size, c) {
        let _ = write!(note, ", bare/moto {reach:.1}x");
        if reach < MOTO_RATIO_TARGET {
            note.push_str(" (the bare in-memory server is under the target itself)");
        }
    }
    Some(note)
}

/// The best 1 MiB PUT MB/s of a run over the disk's MB/s.
fn best_large_put(s: &Settings, r: &RunResult) -> Option<(usize, f64)> {
    s.concurrency
        .iter()
        .filter_map(|&c| r.s3("nimbus", "put", 1 << 20, c).map(|p| (c, p.mb_per_sec() / r.disk.mb_per_sec())))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

fn disk_line(o: &mut String, s: &Settings, r: &RunResult) {
    if let Some((c, share)) = best_large_put(s, r) {
        let _ = writeln!(
            o,
            "  run {}: 1 MiB PUT MB/s / disk MB/s = {:.0} % (best, c={c}; disk {:.0} MB/s) (>= {:.0} %: {})",
            r.run,
            share * 100.0,
            r.disk.mb_per_sec(),
            DISK_SHARE_TARGET * 100.0,
            verdict(share >= DISK_SHARE_TARGET)
        );
    }
}

fn phase_json(p: &Phase) -> Value {
    let mut v = tput_json(&p.tput);
    if let Some(m) = v.as_object_mut() {
        m.insert("store".into(), json!(p.store));
        m.insert("system".into(), json!(p.system));
        m.insert("op".into(), json!(p.op));
        m.insert("bytes".into(), json!(p.size));
        m.insert("mbPerSec".into(), json!(p.mb_per_sec()));
    }
    v
}

pub fn run_json(s: &Settings, r: &RunResult) -> Value {
    let ratios: Vec<Value> =
        r.s3.iter()
            .filter(|p| p.system == "nimbus")
            .filter_map(|n| {
                let m = r.s3("moto", n.op, n.size, n.tput.concurrency)?;
                Some(json!({"op": n.op, "bytes": n.size, "concurrency": n.tput.concurrency,
                        "nimbusOverMoto": n.tput.rps() / m.tput.rps()}))
            })
            .collect();
    let limits: Vec<Value> =
        r.s3.iter()
            .filter(|p| p.system == "bare")
            .map(|b| {
                let (op, size, c) = (b.op, b.size, b.tput.concurrency);
                json!({"op": op, "bytes": size, "concurrency": c,
                        "nimbusOverBare": ratio(r, "nimbus", "bare", op, size, c),
                        "bareOverMoto": ratio(r, "bare", "moto", op, size, c)})
            })
            .collect();
    let best = best_large_put(s, r);
    json!({
        "run": r.run,
        "disk": {"mib": r.disk.mib, "secs": r.disk.secs, "mbPerSec": r.disk.mb_per_sec()},
        "s3": r.s3.iter().map(phase_json).collect::<Vec<_>>(),
        "kv": r.kv.iter().map(phase_json).collect::<Vec<_>>(),
        "nimbusOverMoto": ratios,
        "bare": limits,
        "largePutOverDisk": best.map(|(c, share)| json!({"concurrency": c, "share": share})),
    })
}

pub fn json(s: &Settings, runs: &[RunResult], moto_note: Option<&str>, machine: Value) -> Value {
    json!({
        "benchmark": "storage",
        "notes": [
            "S3: path-style PUT/GET signed with SigV4 (payload SHA-256); PUTs overwrite a ring of 64 keys",
            "a nimbus PUT fsyncs the body, its directory and the metadata commit before it answers; moto keeps objects in memory",
            "bare: nimbus-bench bare-objects, hyper keeping bodies in memory and checking nothing; the limit for any object server here",
            "disk: N MiB in 1 MiB chunks then one fsync, in the data dir's filesystem",
            "KV: /v1/kv with the admin token; increments checked afterwards (the counters add up to the acknowledged increments)",
        ],
        "moto": moto_note.map_or(json!("measured"), |n| json!(n)),
        "targets": {"nimbusOverMoto": MOTO_RATIO_TARGET, "largePutOverDisk": DISK_SHARE_TARGET, "kvIncrementsPerSec": INCREMENT_TARGET},
        "settings": s.json(),
        "machine": machine,
        "runs": runs.iter().map(|r| run_json(s, r)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{self, throughput};

    /// Two runs: the first with the bare server and moto (nimbus ahead of moto on small objects,
    /// behind on 1 MiB PUTs; the bare server under 10x moto on 1 MiB), the second without either
    /// (moto not installed) and with a failed call.
    fn runs() -> Vec<RunResult> {
        let s = Settings::new(false, 2);
        (1..=2)
            .map(|run| {
                let mut s3 = Vec::new();
                let systems: &[&'static str] = if run == 1 { &["nimbus", "bare", "moto"] } else { &["nimbus"] };
                for &system in systems {
                    let k = match system {
                        "nimbus" => 12,
                        "bare" => 20,
                        _ => 1,
                    };
                    for size in s.sizes {
                        for c in s.concurrency {
                            for op in ["put", "get"] {
                                let rps =
                                    if size >= 1 << 20 { 60 * c as u64 / 8 + 40 } else { 300 * k * c as u64 / 16 };
                                let tput = throughput(c, rps, 900.0 * c as f64, 250.0);
                                s3.push(Phase { store: "s3", system, op, size, tput });
                            }
                        }
                    }
                }
                let kv = ["get", "put", "increment"]
                    .into_iter()
                    .map(|op| Phase {
                        store: "kv",
                        system: "nimbus",
                        op,
                        size: 100,
                        tput: throughput(32, 21_000, 1_400.0, 45.0),
                    })
                    .collect();
                let mut r = RunResult { run, disk: Disk { mib: 512, secs: 0.8 }, s3, kv };
                if run == 2 {
                    if let Some(p) = r.s3.first_mut() {
                        p.tput.errors = 1;
                        p.tput.first_error = Some("PUT took over 30s".into());
                    }
                }
                r
            })
            .collect()
    }

    #[test]
    fn the_storage_table_and_json_are_pinned() {
        let s = Settings::new(false, 2);
        let text = table(&s, &runs(), Path::new("/tmp/bench"), None);
        golden::check("storage-table.txt", &text);
        let doc: Vec<Value> = runs().iter().map(|r| run_json(&s, r)).collect();
        golden::check("storage-runs.json", &serde_json::to_string_pretty(&doc).unwrap());
    }

    #[test]
    fn a_missing_moto_is_said_and_leaves_no_ratio() {
        let s = Settings::new(true, 1);
        let text = table(
            &s,
            &runs()[1..],
            Path::new("/tmp/bench"),
            Some("not installed in /x (scripts/bench-tools.sh installs it)"),
        );
        assert!(text.contains("  moto: not installed in /x"), "{text}");
        assert!(text.contains("nimbus/moto ops/s - (moto not measured)"), "{text}");
        assert!(!text.contains("x (>= 10x"), "{text}");
    }
}
